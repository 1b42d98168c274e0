"""What a webhook says, and the hook that queues it in the same transaction as the events.

A delivery's body is fixed when it is queued (``call.ended`` gets its transcript added once, at its
first attempt: see :mod:`callscribe.webhooks.worker`), so every retry sends the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from callscribe.events import Event, TranscriptEvent, event_to_dict
from callscribe.storage.models import WebhookOutbox

log = logging.getLogger(__name__)

CALL_ENDED = "call.ended"


def webhook_type(event: Event) -> str:
    """The webhook event type of ``event``: ``transcript.final``/``transcript.partial`` for
    transcripts, ``trigger.fired`` for triggers, the event's own ``type`` otherwise."""
    if isinstance(event, TranscriptEvent):
        return "transcript.final" if event.is_final else "transcript.partial"
    if event.type == "trigger":
        return "trigger.fired"
    return event.type


def event_time(event: Event) -> float:
    """When ``event`` happened (wall clock, seconds)."""
    at = getattr(event, "at", None)
    if at is None:
        at = getattr(event, "received_at", None)
    return float(at) if at is not None else datetime.now(UTC).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def build_body(event: Event) -> dict[str, Any]:
    """The JSON body of ``event``'s webhook (without the transcript a ``call.ended`` gets later)."""
    return {
        "id": event.event_id,
        "type": webhook_type(event),
        "created_at": iso(event_time(event)),
        "call_sid": getattr(event, "call_sid", None),
        "data": event_to_dict(event),
    }


def dumps(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def with_transcript(body: str, utterances: Sequence[dict[str, Any]]) -> str:
    """``body`` with ``"transcript"`` set to the call's stored utterances (a ``call.ended`` body)."""
    parsed = orjson.loads(body)
    parsed["transcript"] = list(utterances)
    return dumps(parsed)


def needs_transcript(event_type: str, body: str) -> bool:
    """Whether ``body`` is a ``call.ended`` body whose transcript has not been added yet."""
    return event_type == CALL_ENDED and "transcript" not in orjson.loads(body)


def selected(events: Iterable[Event], types: Iterable[str]) -> list[tuple[Event, str]]:
    """The events whose webhook type is in ``types``, with that type."""
    wanted = set(types)
    out = []
    for event in events:
        kind = webhook_type(event)
        if kind in wanted:
            out.append((event, kind))
    return out


class Outbox:
    """The ``store.on_write`` hook: one ``webhook_outbox`` row per (endpoint, selected event), written
    in the transaction that stores the events, so an event is stored and queued, or neither."""

    def __init__(
        self, endpoints: Sequence[str], types: Iterable[str], on_commit: Callable[[], None] | None = None
    ) -> None:
        self.endpoints = list(dict.fromkeys(endpoints))
        self.types = set(types)
        self.on_commit = on_commit

    def rows(self, events: Iterable[Event], now: datetime | None = None) -> list[dict[str, Any]]:
        """The outbox rows for ``events`` (plain dicts, ready for an INSERT)."""
        if not self.endpoints:
            return []
        now = now or datetime.now(UTC)
        rows = []
        for event, kind in selected(events, self.types):
            if not event.event_id:  # cannot be deduplicated or ordered: a bug upstream
                log.error("webhook outbox: %s event without event_id not queued", kind)
                continue
            body = dumps(build_body(event))
            for endpoint in self.endpoints:
                rows.append(
                    {
                        "endpoint": endpoint,
                        "event_id": event.event_id,
                        "call_sid": getattr(event, "call_sid", None),
                        "event_type": kind,
                        "body": body,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                )
        return rows

    async def enqueue(self, session: AsyncSession, events: list[Event]) -> None:
        rows = self.rows(events)
        if not rows:
            return
        insert: Any = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        # an event stored twice (a batch replayed after a failure) is queued once
        stmt = insert(WebhookOutbox).on_conflict_do_nothing(index_elements=["endpoint", "event_id"])
        await session.execute(stmt, rows)
        if self.on_commit is not None:
            on_commit = self.on_commit
            # wake the worker once the rows are visible to its own sessions, not before
            sa_event.listen(session.sync_session, "after_commit", lambda _s: on_commit(), once=True)
