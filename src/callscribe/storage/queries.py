"""Read side of the store: plain, JSON-ready dicts (datetimes as ISO 8601 strings in UTC).

Full-text search (``q``): every word of ``q`` must occur in one utterance, as a whole word, case
folded, no stemming. SQLite answers from the FTS5 index ``utterances_fts`` (or, where SQLite lacks
FTS5, a case-insensitive LIKE per word, which also matches inside words); PostgreSQL from
``to_tsvector('simple', text) @@ plainto_tsquery('simple', q)`` over a GIN index.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from callscribe.events import Track, TranscriptEvent, Word, event_to_dict
from callscribe.storage.models import call_events, calls, utterances

SIMPLE = sa.literal_column("'simple'::regconfig")  # a literal: must match the index expression


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def call_dict(row: sa.Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {
        "call_sid": m["call_sid"],
        "stream_sid": m["stream_sid"],
        "account_sid": m["account_sid"],
        "custom_parameters": m["custom_parameters"],
        "tracks": m["tracks"],
        "speakers": m["speakers"],
        "engine": m["engine"],
        "status": m["status"],
        "end_reason": m["end_reason"],
        "started_at": iso(m["started_at"]),
        "ended_at": iso(m["ended_at"]),
        "duration": m["duration"],
        "counters": m["counters"],
        "last_event_id": m["last_event_id"],
        "utterance_count": m["utterance_count"],
        "notes": m.get("notes"),
    }


def utterance_dict(row: sa.Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {c.name: m[c.name] for c in utterances.c if c.name != "id"}


def call_event_dict(row: sa.Row[Any]) -> dict[str, Any]:
    m = row._mapping
    out = {c.name: m[c.name] for c in call_events.c if c.name != "id"}
    out["at"] = iso(out["at"])
    return out


def final_event_dict(row: sa.Row[Any]) -> dict[str, Any]:
    """A stored final as ``event_to_dict`` of the TranscriptEvent it came from."""
    m = row._mapping
    event = TranscriptEvent(
        call_sid=m["call_sid"],
        stream_sid=m["stream_sid"],
        track=Track(m["track"]),
        speaker=m["speaker"],
        utterance_id=m["utterance_id"],
        text=m["text"],
        is_final=True,
        start=m["start"],
        end=m["end"],
        words=tuple(Word(**w) for w in m["words"] or ()),
        language=m["language"],
        confidence=m["confidence"],
        stable_text=m["stable_text"],
        received_at=m["received_at"],
        engine=m["engine"],
        event_id=m["event_id"],
    )
    return event_to_dict(event)


_utterance_count = (
    sa.select(sa.func.count())
    .where(utterances.c.call_sid == calls.c.call_sid)
    .correlate(calls)
    .scalar_subquery()
    .label("utterance_count")
)
CALL_COLUMNS = [*calls.c, _utterance_count]


def text_match(dialect: str, q: str, *, fts5: bool) -> sa.ColumnElement[bool] | None:
    """A condition on ``utterances`` for full-text ``q`` (None when ``q`` has no words)."""
    words = re.findall(r"\w+", q)
    if not words:
        return None
    if dialect == "postgresql":
        return sa.func.to_tsvector(SIMPLE, utterances.c.text).bool_op("@@")(
            sa.func.plainto_tsquery(SIMPLE, " ".join(words))
        )
    if fts5:
        # Quoted terms: user input is never parsed as FTS5 syntax (AND, NEAR, *, column filters).
        match = " ".join(f'"{w}"' for w in words)
        hits = sa.text("SELECT rowid FROM utterances_fts WHERE utterances_fts MATCH :fts_q").bindparams(
            fts_q=match
        )
        return utterances.c.id.in_(hits)
    return sa.and_(*(utterances.c.text.ilike(f"%{w}%") for w in words))


def call_filters(
    dialect: str,
    *,
    fts5: bool,
    since: datetime | None,
    until: datetime | None,
    status: str | None,
    speaker: str | None,
    q: str | None,
) -> list[sa.ColumnElement[bool]]:
    """WHERE terms on ``calls``. ``speaker`` and ``q`` together: that speaker said those words."""
    where: list[sa.ColumnElement[bool]] = []
    if since is not None:
        where.append(calls.c.started_at >= since)
    if until is not None:
        where.append(calls.c.started_at < until)
    if status:
        where.append(calls.c.status == status)
    said: list[sa.ColumnElement[bool]] = []
    if speaker:
        said.append(utterances.c.speaker == speaker)
    match = text_match(dialect, q, fts5=fts5) if q else None
    if match is not None:
        said.append(match)
    if said:
        where.append(calls.c.call_sid.in_(sa.select(utterances.c.call_sid).where(*said)))
    return where
