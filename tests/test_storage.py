"""The store on SQLite and PostgreSQL: what is kept, queries, retention, resume, and the write path
when the database goes away (buffering, retry, overflow, idempotence)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from callscribe.events import (
    CallEnded,
    CallError,
    CallInfo,
    CallStarted,
    Event,
    Track,
    TranscriptEvent,
    TriggerFired,
    Word,
    event_to_dict,
    with_event_id,
)
from callscribe.sinks.fanout import FanOut
from callscribe.sinks.store import StoreSink
from callscribe.storage import Store, migrate
from callscribe.storage.models import Base, WebhookAttempt, WebhookOutbox
from callscribe.storage.store import make_engine
from callscribe.storage.writes import write_batch

DAY = 86_400.0


# --- helpers


def started(sid: str, *, at: float | None = None, **info: Any) -> CallStarted:
    call = CallInfo(call_sid=sid, stream_sid=f"MZ{sid}", tracks=(Track.INBOUND, Track.OUTBOUND), **info)
    return with_event_id(CallStarted(call, engine="local", at=time.time() if at is None else at))  # type: ignore[return-value]


def final(
    sid: str, text: str, *, start: float = 0.0, track: Track = Track.INBOUND, **kw: Any
) -> TranscriptEvent:
    speaker = "caller" if track is Track.INBOUND else "agent"
    words = tuple(Word(w, start + i * 0.3, start + i * 0.3 + 0.25, 0.9) for i, w in enumerate(text.split()))
    event = TranscriptEvent(
        call_sid=sid,
        stream_sid=f"MZ{sid}",
        track=track,
        speaker=speaker,
        utterance_id=f"{sid}-{start}",
        text=text,
        is_final=True,
        start=start,
        end=start + 1.5,
        words=words,
        language="en",
        confidence=0.87,
        stable_text=text[:3],
        engine="local",
        **kw,
    )
    return with_event_id(event)  # type: ignore[return-value]


def partial(sid: str, text: str) -> TranscriptEvent:
    return with_event_id(  # type: ignore[return-value]
        TranscriptEvent(sid, f"MZ{sid}", Track.INBOUND, "caller", f"{sid}-p", text, False, 0.0, 0.5)
    )


def ended(sid: str, **kw: Any) -> CallEnded:
    counters = {"frames": 500, "gaps": 2, "malformed": 1}
    return with_event_id(CallEnded(sid, f"MZ{sid}", "stop", 10.0, counters, **kw))  # type: ignore[return-value]


def submit_all(store: Store, events: list[Event]) -> None:
    for e in events:
        store.submit(e)


async def settle(store: Store, timeout: float = 10.0) -> None:
    await asyncio.wait_for(store.flush(), timeout)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def count(store: Store, table: str) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- what is stored


async def test_events_round_trip(store: Store) -> None:
    start = started("CA1", account_sid="AC1", custom_parameters={"tenant": "acme"})
    f1 = final("CA1", "Hello, I need a refund", start=0.5)
    f2 = final("CA1", "Sure, let me check", start=2.0, track=Track.OUTBOUND)
    err = with_event_id(CallError("CA1", "MZCA1", "engine_timeout", "no answer", retrying=True))
    trig = with_event_id(
        TriggerFired(
            "CA1",
            "MZCA1",
            "refund",
            "CA1-0.5",
            Track.INBOUND,
            "caller",
            "need a refund",
            "Hello, I need a refund",
            False,
            "warning",
            {"kb": "https://kb/refunds"},
        )
    )
    end = replace(ended("CA1"), notes={"topics": ["refund"], "talk_time": {"caller": 1.5}})
    submit_all(store, [start, f1, partial("CA1", "Sure let"), trig, f2, err, end])
    await settle(store)

    call = await store.get_call("CA1")
    assert call is not None
    assert call | {"started_at": None, "ended_at": None} == {
        "call_sid": "CA1",
        "stream_sid": "MZCA1",
        "account_sid": "AC1",
        "custom_parameters": {"tenant": "acme"},
        "tracks": ["inbound", "outbound"],
        "speakers": {"inbound": "caller", "outbound": "agent"},
        "engine": "local",
        "status": "ended",
        "end_reason": "stop",
        "started_at": None,
        "ended_at": None,
        "duration": 10.0,
        "counters": {"frames": 500, "gaps": 2, "malformed": 1},
        "last_event_id": end.event_id,
        "utterance_count": 2,
        "notes": {"topics": ["refund"], "talk_time": {"caller": 1.5}},
    }
    assert datetime.fromisoformat(call["started_at"]) == datetime.fromtimestamp(start.at, UTC)
    assert datetime.fromisoformat(call["ended_at"]).tzinfo is not None

    rows = await store.utterances("CA1")
    assert [r["event_id"] for r in rows] == [f1.event_id, f2.event_id]
    assert rows[0]["words"][0] == {"word": "Hello,", "start": 0.5, "end": 0.75, "confidence": 0.9}
    assert rows[1] | {"words": None} == {
        "event_id": f2.event_id,
        "call_sid": "CA1",
        "stream_sid": "MZCA1",
        "utterance_id": "CA1-2.0",
        "track": "outbound",
        "speaker": "agent",
        "start": 2.0,
        "end": 3.5,
        "text": "Sure, let me check",
        "stable_text": "Sur",
        "words": None,
        "language": "en",
        "confidence": 0.87,
        "engine": "local",
        "redactions": None,
        "received_at": f2.received_at,
    }
    events = await store.call_events("CA1")
    assert [e["type"] for e in events] == ["call.error", "trigger.fired"]  # in time order
    assert events[1] == {
        "event_id": trig.event_id,
        "call_sid": "CA1",
        "type": "trigger.fired",
        "code": "refund",
        "message": "need a refund",
        "payload": {
            "stream_sid": "MZCA1",
            "utterance_id": "CA1-0.5",
            "track": "inbound",
            "speaker": "caller",
            "text": "Hello, I need a refund",
            "is_final": False,
            "severity": "warning",
            "payload": {"kb": "https://kb/refunds"},
        },
        "at": datetime.fromtimestamp(trig.at, UTC).isoformat(),
    }
    assert events[:1] == [
        {
            "event_id": err.event_id,
            "call_sid": "CA1",
            "type": "call.error",
            "code": "engine_timeout",
            "message": "no answer",
            "payload": {"stream_sid": "MZCA1", "retrying": True},
            "at": datetime.fromtimestamp(err.at, UTC).isoformat(),
        }
    ]
    assert store.stats == {
        "buffered": 0,
        "written": 6,
        "retries": 0,
        "dropped_on_overflow": 0,
        "rejected": 0,
        "last_error": None,
    }
    assert await store.get_call("nope") is None


async def test_partials_are_not_stored(store: Store) -> None:
    submit_all(store, [started("CA1"), partial("CA1", "hel"), partial("CA1", "hello")])
    await settle(store)
    assert await count(store, "utterances") == 0
    assert store.stats["written"] == 1


async def test_utterances_are_ordered_by_start_time(store: Store) -> None:
    late, early = final("CA1", "second", start=5.0), final("CA1", "first", start=1.0)
    submit_all(store, [started("CA1"), late, early])
    await settle(store)
    assert [u["text"] for u in await store.utterances("CA1")] == ["first", "second"]


async def test_a_final_before_its_call_started_is_kept(store: Store) -> None:
    early = final("CA9", "already talking")
    submit_all(store, [early, with_event_id(CallError("CA9", "MZCA9", "x", "y"))])
    await settle(store)
    call = await store.get_call("CA9")
    assert call is not None and call["status"] == "live" and call["utterance_count"] == 1
    assert call["speakers"] == {"inbound": "caller"}

    late = started("CA9", account_sid="AC9")  # it turns up after all: it fills the row in
    store.submit(late)
    await settle(store)
    call = await store.get_call("CA9")
    assert call is not None and call["account_sid"] == "AC9" and call["tracks"] == ["inbound", "outbound"]


# --- queries


async def _four_calls(store: Store) -> datetime:
    now = time.time()
    submit_all(
        store,
        [
            started("CA_OLD", at=now - 3 * DAY),
            final("CA_OLD", "I want a REFUND please"),
            ended("CA_OLD"),
            started("CA_MID", at=now - 2 * DAY),
            final("CA_MID", "the refund was processed", track=Track.OUTBOUND),
            ended("CA_MID"),
            started("CA_NEW", at=now - 1 * DAY),
            final("CA_NEW", "where is my parcel"),
            started("CA_NOW", at=now),
            final("CA_NOW", "refunds are slow", track=Track.OUTBOUND),
        ],
    )
    await settle(store)
    return datetime.fromtimestamp(now, UTC)


async def test_list_calls_filters_and_pages(store: Store) -> None:
    now = await _four_calls(store)

    async def sids(**kw: Any) -> tuple[list[str], int]:
        page, total = await store.list_calls(**kw)
        return [c["call_sid"] for c in page], total

    assert await sids() == (["CA_NOW", "CA_NEW", "CA_MID", "CA_OLD"], 4)  # newest first
    assert await sids(since=now - timedelta(days=2, hours=1)) == (["CA_NOW", "CA_NEW", "CA_MID"], 3)
    assert await sids(since=now - timedelta(days=2, hours=1), until=now) == (["CA_NEW", "CA_MID"], 2)
    assert await sids(status="ended") == (["CA_MID", "CA_OLD"], 2)
    assert await sids(status="live") == (["CA_NOW", "CA_NEW"], 2)
    assert await sids(speaker="agent") == (["CA_NOW", "CA_MID"], 2)
    # full text: case-insensitive whole words, every word must occur in one utterance
    assert await sids(q="refund") == (["CA_MID", "CA_OLD"], 2)
    assert await sids(q="Refund PLEASE") == (["CA_OLD"], 1)
    assert await sids(q="refund parcel") == ([], 0)
    assert await sids(q="refund", speaker="agent") == (["CA_MID"], 1)  # that speaker said it
    assert await sids(q="refund", status="live") == ([], 0)
    assert await sids(q="  ,.  ") == (["CA_NOW", "CA_NEW", "CA_MID", "CA_OLD"], 4)  # no words: no filter
    # pages keep the total
    assert await sids(limit=2) == (["CA_NOW", "CA_NEW"], 4)
    assert await sids(limit=2, offset=2) == (["CA_MID", "CA_OLD"], 4)
    assert await sids(limit=2, offset=4) == ([], 4)
    page, _ = await store.list_calls(limit=1)
    assert page[0]["utterance_count"] == 1


async def test_search_text_is_never_parsed_as_query_syntax(store: Store) -> None:
    await _four_calls(store)
    for q in ['refund"', "refund*", "NEAR(refund parcel)", "text:refund", "refund AND OR NOT", "'; --"]:
        await store.list_calls(q=q)  # must not raise
    assert (await store.list_calls(q='"refund"'))[1] == 2


async def test_search_falls_back_to_like_without_fts5(sqlite_url: str) -> None:
    s = Store.from_url(sqlite_url, batch_delay=0.0)
    await s.start()
    try:
        assert s.fts5
        s.fts5 = False  # as on an SQLite built without FTS5
        await _four_calls(s)
        assert [c["call_sid"] for c in (await s.list_calls(q="REFUND please"))[0]] == ["CA_OLD"]
    finally:
        await s.close()


async def test_finals_since_resumes_in_event_id_order(store: Store) -> None:
    a1, b1 = final("CA_A", "one"), final("CA_B", "two")
    a2, b2 = final("CA_A", "three", start=2.0), final("CA_B", "four", start=2.0)
    submit_all(store, [started("CA_A"), started("CA_B"), a1, b1, partial("CA_A", "x"), a2, b2, ended("CA_A")])
    await settle(store)

    everything = await store.finals_since("")
    assert everything == [event_to_dict(e) for e in (a1, b1, a2, b2)]  # the exact /live shape
    assert everything[0]["type"] == "transcript" and everything[0]["is_final"] is True
    assert await store.finals_since(b1.event_id) == [event_to_dict(a2), event_to_dict(b2)]
    assert await store.finals_since("", call_sid="CA_A") == [event_to_dict(a1), event_to_dict(a2)]
    assert await store.finals_since(a1.event_id, call_sid="CA_A") == [event_to_dict(a2)]
    assert await store.finals_since("", limit=1) == [event_to_dict(a1)]
    assert await store.finals_since(b2.event_id) == []


# --- deletion


async def _outbox_row(store: Store, sid: str, event_id: str) -> None:
    async with store.sessionmaker() as session, session.begin():
        box = WebhookOutbox(
            endpoint="https://example.test/hook", event_id=event_id, call_sid=sid, event_type="x", body="{}"
        )
        session.add(box)
        await session.flush()
        session.add(WebhookAttempt(outbox_id=box.id, attempt=1, status_code=500, duration_ms=12))


async def test_delete_call_cascades(store: Store) -> None:
    keep, gone = final("CA_KEEP", "refund"), final("CA_GONE", "refund")
    error = with_event_id(CallError("CA_GONE", "MZ", "e", "m"))
    submit_all(store, [started("CA_KEEP"), keep, started("CA_GONE"), gone, error])
    await settle(store)
    await _outbox_row(store, "CA_GONE", gone.event_id)
    await _outbox_row(store, "CA_KEEP", keep.event_id)

    assert await store.delete_call("CA_GONE") is True
    assert await store.delete_call("CA_GONE") is False
    assert await store.get_call("CA_GONE") is None
    assert await store.utterances("CA_GONE") == [] and await store.call_events("CA_GONE") == []
    assert (await count(store, "webhook_outbox"), await count(store, "webhook_attempts")) == (1, 1)
    assert [c["call_sid"] for c in (await store.list_calls(q="refund"))[0]] == ["CA_KEEP"]
    await fts_integrity(store)


async def fts_integrity(store: Store) -> None:
    """SQLite: FTS5 checks its index against the utterances (raises when a trigger missed a change)."""
    if store.dialect == "sqlite":
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO utterances_fts(utterances_fts) VALUES ('integrity-check')")
            )


async def test_search_follows_text_rewrites(store: Store) -> None:
    submit_all(store, [started("CA1"), final("CA1", "my card number is 4111")])
    await settle(store)
    async with store.engine.begin() as conn:  # as redaction will do
        await conn.execute(sa.text("UPDATE utterances SET text = 'my card number is [redacted]'"))
    assert (await store.list_calls(q="4111"))[1] == 0
    assert (await store.list_calls(q="redacted"))[1] == 1
    await fts_integrity(store)


async def test_retention_deletes_old_calls_only(store: Store) -> None:
    now = time.time()
    submit_all(
        store,
        [
            started("CA_40D", at=now - 40 * DAY),
            final("CA_40D", "old"),
            started("CA_31D", at=now - 31 * DAY),
            started("CA_29D", at=now - 29 * DAY),
            started("CA_NOW", at=now),
        ],
    )
    await settle(store)
    assert await store.delete_older_than(0) == 0  # 0 = keep everything, as RETENTION_DAYS=0
    assert await store.delete_older_than(30) == 2
    assert sorted(c["call_sid"] for c in (await store.list_calls())[0]) == ["CA_29D", "CA_NOW"]
    assert await count(store, "utterances") == 0
    assert await store.delete_older_than(30) == 0


# --- idempotence and the write path


async def test_writes_are_idempotent(store: Store) -> None:
    batch: list[Event] = [started("CA1"), final("CA1", "hello"), final("CA1", "bye", start=2.0), ended("CA1")]
    batch.append(with_event_id(CallError("CA1", "MZCA1", "c", "m")))
    # a retry after a commit whose answer was lost: the whole batch again
    for _ in range(2):
        async with store.sessionmaker() as session, session.begin():
            await write_batch(session, batch)
    again = started("CA1")
    submit_all(store, [*batch, again])  # and once more through the buffer, plus a second CallStarted
    await settle(store)
    assert [await count(store, t) for t in ("calls", "utterances", "call_events")] == [1, 2, 1]
    call = await store.get_call("CA1")
    assert call is not None and call["status"] == "ended"  # a repeated CallStarted does not revive it
    assert call["last_event_id"] == again.event_id
    async with store.sessionmaker() as session, session.begin():
        await write_batch(session, batch)  # an old batch replayed last does not move it back
    assert (await store.get_call("CA1") or {})["last_event_id"] == again.event_id


async def test_on_write_hook_shares_the_batch_transaction(store: Store) -> None:
    fail = True

    async def outbox(session: Any, events: list[Event]) -> None:
        for e in events:
            session.add(
                WebhookOutbox(
                    endpoint="https://h",
                    event_id=e.event_id,
                    call_sid=e.call_sid,
                    event_type=e.type,
                    body="{}",
                )
            )
        await session.flush()
        if fail:
            raise RuntimeError("webhook outbox is unhappy")

    store.on_write(outbox)
    submit_all(store, [started("CA1"), final("CA1", "hello")])
    await until(lambda: store.stats["retries"] >= 2)
    # rolled back together: neither the batch nor the hook's rows
    assert [await count(store, t) for t in ("calls", "utterances", "webhook_outbox")] == [0, 0, 0]
    assert store.stats["buffered"] == 2 and "webhook outbox is unhappy" in store.stats["last_error"]
    fail = False
    await settle(store)
    assert [await count(store, t) for t in ("calls", "utterances", "webhook_outbox")] == [1, 1, 2]


async def test_an_event_the_database_refuses_does_not_block_the_others(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # not JSON-serialisable: fails while binding, before the database sees it, on every retry
    bad = replace(final("CA1", "bad"), words=(Word("x", 0, 1, object()),))  # type: ignore[arg-type]
    good = final("CA1", "good", start=3.0)
    with caplog.at_level(logging.ERROR, "callscribe.storage"):
        submit_all(store, [started("CA1"), bad, good, ended("CA1")])
        await settle(store)
    assert [u["text"] for u in await store.utterances("CA1")] == ["good"]
    assert store.stats["rejected"] == 1 and store.stats["written"] == 3
    assert any("refused transcript" in r.message and "CA1" in r.message for r in caplog.records)


async def test_store_sink_hands_events_to_the_store(store: Store) -> None:
    fanout = FanOut([StoreSink(store)])
    await fanout.start()
    fanout.publish(started("CA1"))
    fanout.publish(TranscriptEvent("CA1", "MZ", Track.INBOUND, "caller", "u", "hi", True, 0, 1))
    await fanout.close()
    await settle(store)
    assert [u["text"] for u in await store.utterances("CA1")] == ["hi"]


# --- the database goes away


class TcpProxy:
    """A TCP relay to PostgreSQL that can be cut (listener closed, connections reset) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Outage:
    """Makes the store's database unavailable: PostgreSQL behind a cut proxy, SQLite write-locked
    by another connection (with a short busy timeout, so each attempt fails fast)."""

    def __init__(self, url: str) -> None:
        self.parsed = make_url(url)
        self.proxy: TcpProxy | None = None
        self.lock: sqlite3.Connection | None = None

    async def url(self) -> str:
        if self.parsed.get_backend_name() == "sqlite":
            return self.parsed.update_query_dict({"timeout": "0.05"}).render_as_string(hide_password=False)
        self.proxy = TcpProxy(self.parsed.host or "127.0.0.1", self.parsed.port or 5432)
        await self.proxy.up()
        return self.parsed.set(port=self.proxy.port).render_as_string(hide_password=False)

    async def down(self) -> None:
        if self.proxy:
            await self.proxy.down()
        else:
            self.lock = sqlite3.connect(self.parsed.database or "", isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")

    async def up(self) -> None:
        if self.proxy:
            await self.proxy.up()
        elif self.lock:
            self.lock.rollback()
            self.lock.close()
            self.lock = None

    async def close(self) -> None:
        await self.up()
        if self.proxy:
            await self.proxy.down()


async def test_calls_go_on_while_the_database_is_down(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(db_url)
    store = Store.from_url(await outage.url(), batch_delay=0.005, retry_max_delay=0.2)
    await store.start()
    try:
        store.submit(started("CA1"))
        await settle(store)
        with caplog.at_level(logging.INFO, "callscribe.storage"):
            await outage.down()
            t0 = time.perf_counter()
            finals = [final("CA1", f"sentence {i}", start=float(i)) for i in range(20)]
            submit_all(store, [*finals, with_event_id(CallError("CA1", "MZ", "e", "m")), ended("CA1")])
            assert time.perf_counter() - t0 < 0.05  # submit never waits for the database
            await until(lambda: store.stats["retries"] >= 3)
            assert store.stats["buffered"] == 22 and store.stats["last_error"]
            store.submit(final("CA1", "still talking", start=30.0))  # the call goes on
            await outage.up()
            await settle(store)
        assert [u["text"] for u in await store.utterances("CA1")] == [
            *(f.text for f in finals),
            "still talking",
        ]
        call = await store.get_call("CA1")
        assert call is not None and call["status"] == "ended" and len(await store.call_events("CA1")) == 1
        assert store.stats["buffered"] == 0 and store.stats["dropped_on_overflow"] == 0
        unavailable = [r for r in caplog.records if "store unavailable" in r.message]
        assert len(unavailable) == 1  # once per outage, not once per retry
        assert any("store is back" in r.message for r in caplog.records)
    finally:
        await outage.up()
        await store.close(timeout=5)
        await outage.close()


async def test_buffer_overflow_drops_the_oldest_and_says_so(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage(db_url)
    store = Store.from_url(await outage.url(), buffer_max=5, batch_delay=0.005, retry_max_delay=0.1)
    await store.start()
    before = metric("callscribe_store_dropped_total", type="call.started")
    before_finals = metric("callscribe_store_dropped_total", type="transcript")
    try:
        await outage.down()
        first = started("CA1")
        finals = [final("CA1", f"utterance {i}", start=float(i)) for i in range(7)]
        with caplog.at_level(logging.ERROR, "callscribe.storage"):
            submit_all(store, [first, *finals])  # 8 events, room for 5
            await until(lambda: store.stats["retries"] >= 1)
        assert store.stats["dropped_on_overflow"] == 3 and store.stats["buffered"] == 5
        assert metric("callscribe_store_dropped_total", type="call.started") - before == 1
        assert metric("callscribe_store_dropped_total", type="transcript") - before_finals == 2
        assert metric("callscribe_store_buffered") == 5
        drops = [r for r in caplog.records if "dropped" in r.message]
        assert len(drops) == 3 and all(r.levelno == logging.ERROR and "CA1" in r.message for r in drops)
        assert "call.started" in drops[0].message and "transcript" in drops[1].message

        await outage.up()
        await settle(store)
        # the newest five made it, and the call row exists although its CallStarted was dropped
        assert [u["text"] for u in await store.utterances("CA1")] == [f.text for f in finals[2:]]
        assert await store.get_call("CA1") is not None
    finally:
        await outage.up()
        await store.close(timeout=5)
        await outage.close()


async def test_close_flushes_what_is_buffered(db_url: str) -> None:
    store = Store.from_url(db_url, batch_delay=1.0)  # a long delay: close must not wait for it
    await store.start()
    submit_all(store, [started("CA1"), final("CA1", "last words")])
    t0 = time.perf_counter()
    await store.close(timeout=5)
    assert time.perf_counter() - t0 < 0.9
    reopened = Store.from_url(db_url)
    await reopened.start()
    try:
        assert [u["text"] for u in await reopened.utterances("CA1")] == ["last words"]
    finally:
        await reopened.close()


# --- migrations


async def test_migrations_are_idempotent_and_safe_when_instances_race(db_url: str, tmp_path: Path) -> None:
    # three engines (three connections) on one database, and one on another database, all at once
    stores = [Store.from_url(db_url) for _ in range(3)]
    stores.append(Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"))
    try:
        await asyncio.gather(*(s.start() for s in stores))
        await stores[0].close()
        stores[0] = Store.from_url(db_url)
        await stores[0].start()  # and again, on a migrated database
        assert await migrate.current_revision(stores[0].engine) == "0002"
    finally:
        for s in stores:
            await s.close()


MIGRATE_AT = """
import asyncio, sys, time
from callscribe.storage import Store

async def main(url: str, at: float) -> None:
    store = Store.from_url(url)
    await asyncio.sleep(max(0.0, at - time.time()))  # imports done: start together
    await store.start()
    await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


async def test_migrations_are_safe_when_processes_race(db_url: str) -> None:
    at = str(time.time() + 1.5)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE_AT, db_url, at, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in results]
    engine = make_engine(db_url)
    try:
        assert await migrate.current_revision(engine) == "0002"
    finally:
        await engine.dispose()


async def test_models_match_the_migrations(store: Store) -> None:
    def diff(conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": migrate.include_object}
        )
        return compare_metadata(ctx, Base.metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
