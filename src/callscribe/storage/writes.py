"""One batch of events → rows, in one transaction. Every statement is idempotent, so a batch that
is retried after a commit whose answer was lost changes nothing the second time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from callscribe.events import CallEnded, CallError, CallStarted, Event, TranscriptEvent, TriggerFired
from callscribe.storage.models import call_events, calls, utterances

_E = TypeVar("_E", CallStarted, CallEnded)


def storable(event: Event) -> bool:
    """What the store keeps: call lifecycle, errors and finals (partials are live-only)."""
    return not isinstance(event, TranscriptEvent) or event.is_final


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _insert(session: AsyncSession, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support: both backends speak it, through their own dialect classes."""
    name = session.bind.dialect.name if session.bind else ""
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"callscribe storage supports sqlite and postgresql, not {name!r}")


def _event_time(event: Event) -> float:
    return event.received_at if isinstance(event, TranscriptEvent) else event.at


def _started_row(e: CallStarted) -> dict[str, Any]:
    return {
        "call_sid": e.call.call_sid,
        "stream_sid": e.call.stream_sid,
        "account_sid": e.call.account_sid,
        "custom_parameters": dict(e.call.custom_parameters),
        "tracks": [str(t) for t in e.call.tracks],
        "speakers": {str(k): v for k, v in e.call.speakers.items()},
        "engine": e.engine,
        "status": "live",
        "started_at": _ts(e.at),
        "counters": {},
    }


def _minimal_row(e: Event) -> dict[str, Any]:
    """A call row for an event whose CallStarted never arrived (lost, or dropped on overflow)."""
    return {
        "call_sid": e.call_sid,
        "stream_sid": getattr(e, "stream_sid", ""),
        "account_sid": "",
        "custom_parameters": {},
        "tracks": [str(e.track)] if isinstance(e, TranscriptEvent) else [],
        "speakers": {str(e.track): e.speaker} if isinstance(e, TranscriptEvent) else {},
        "engine": e.engine if isinstance(e, TranscriptEvent) else "",
        "status": "live",
        "started_at": _ts(_event_time(e)),
        "counters": {},
    }


def _utterance_row(e: TranscriptEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "call_sid": e.call_sid,
        "stream_sid": e.stream_sid,
        "utterance_id": e.utterance_id,
        "track": str(e.track),
        "speaker": e.speaker,
        "start": e.start,
        "end": e.end,
        "text": e.text,
        "stable_text": e.stable_text,
        "words": [asdict(w) for w in e.words],
        "language": e.language,
        "confidence": e.confidence,
        "engine": e.engine,
        "received_at": e.received_at,
    }


def _trigger_row(e: TriggerFired) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "call_sid": e.call_sid,
        "type": e.type,
        "code": e.rule_id,
        "message": e.matched,
        "payload": {
            "stream_sid": e.stream_sid,
            "utterance_id": e.utterance_id,
            "track": str(e.track),
            "speaker": e.speaker,
            "text": e.text,
            "is_final": e.is_final,
            "severity": e.severity,
            "payload": e.payload,
        },
        "at": _ts(e.at),
    }


def _error_row(e: CallError) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "call_sid": e.call_sid,
        "type": e.type,
        "code": e.code,
        "message": e.message,
        "payload": {"stream_sid": e.stream_sid, "retrying": e.retrying},
        "at": _ts(e.at),
    }


async def write_batch(session: AsyncSession, events: Sequence[Event]) -> None:
    """Write ``events`` (storable ones, in submission order) inside the caller's transaction."""
    started = [e for e in events if isinstance(e, CallStarted)]
    finals = [e for e in events if isinstance(e, TranscriptEvent) and e.is_final]
    errors = [e for e in events if isinstance(e, CallError | TriggerFired)]
    ended = [e for e in events if isinstance(e, CallEnded)]

    if started:
        # A second CallStarted, or one arriving after a minimal row, fills in what is known; it never
        # turns an ended call back to live.
        stmt = _insert(session, calls)
        update = {
            c: stmt.excluded[c]
            for c in ("stream_sid", "account_sid", "custom_parameters", "tracks", "speakers", "engine")
        }
        update["started_at"] = stmt.excluded.started_at
        stmt = stmt.on_conflict_do_update(index_elements=["call_sid"], set_=update)
        await session.execute(stmt, [_started_row(e) for e in _last_per_call(started)])

    covered = {e.call_sid for e in started}
    missing = {e.call_sid: e for e in reversed([*finals, *errors, *ended]) if e.call_sid not in covered}
    if missing:
        stmt = _insert(session, calls).on_conflict_do_nothing(index_elements=["call_sid"])
        await session.execute(stmt, [_minimal_row(e) for e in missing.values()])

    if finals:
        stmt = _insert(session, utterances).on_conflict_do_nothing(index_elements=["event_id"])
        await session.execute(stmt, [_utterance_row(e) for e in finals])
    if errors:
        stmt = _insert(session, call_events).on_conflict_do_nothing(index_elements=["event_id"])
        rows = [_trigger_row(e) if isinstance(e, TriggerFired) else _error_row(e) for e in errors]
        await session.execute(stmt, rows)

    if ended:
        stmt = (
            sa.update(calls)
            .where(calls.c.call_sid == sa.bindparam("sid"))
            .values(
                status="ended",
                end_reason=sa.bindparam("b_reason"),
                ended_at=sa.bindparam("b_at", type_=calls.c.ended_at.type),
                duration=sa.bindparam("b_duration"),
                counters=sa.bindparam("b_counters", type_=calls.c.counters.type),
                notes=sa.bindparam("b_notes", type_=calls.c.notes.type),
            )
        )
        rows = [
            {
                "sid": e.call_sid,
                "b_reason": e.reason,
                "b_at": _ts(e.at),
                "b_duration": e.duration,
                "b_counters": dict(e.counters),
                "b_notes": e.notes,
            }
            for e in _last_per_call(ended)
        ]
        await session.execute(stmt, rows)

    # last_event_id only moves forward, so replaying an old batch cannot move it back.
    last: dict[str, str] = {}
    for e in events:
        last[e.call_sid] = max(last.get(e.call_sid, ""), e.event_id)
    stmt = (
        sa.update(calls)
        .where(calls.c.call_sid == sa.bindparam("sid"))
        .where(sa.or_(calls.c.last_event_id.is_(None), calls.c.last_event_id < sa.bindparam("eid")))
        .values(last_event_id=sa.bindparam("eid"))
    )
    await session.execute(stmt, [{"sid": sid, "eid": eid} for sid, eid in last.items()])


def _last_per_call(events: list[_E]) -> list[_E]:
    """One event per call (the latest): an executemany upsert must not touch a row twice."""
    return list({e.call_sid: e for e in events}.values())
