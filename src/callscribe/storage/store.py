"""The store: calls, finals and call events in SQLite or PostgreSQL, written off the audio path.

``submit`` only appends to an in-memory buffer. A writer task drains it in batches, one
transaction each. When the database is unreachable the batch goes back to the head of the buffer
and is retried with exponential backoff; the buffer keeps accepting events up to ``buffer_max``,
then drops the oldest, each with an ERROR line and a counted metric. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from callscribe.events import Event, with_event_id
from callscribe.observability import metrics
from callscribe.storage import migrate, queries
from callscribe.storage.models import call_events, calls, utterances
from callscribe.storage.writes import storable, write_batch

log = logging.getLogger(__name__)

DROPPED = Counter(
    "callscribe_store_dropped_total", "Events dropped because the store buffer overflowed.", ["type"]
)
REJECTED = Counter(
    "callscribe_store_rejected_total", "Events the database refused (bad data), logged and skipped."
)
WRITTEN = Counter("callscribe_store_written_total", "Events committed to the store.")
RETRIES = Counter("callscribe_store_retries_total", "Failed batch writes that were retried.")
BUFFERED = Gauge(
    "callscribe_store_buffered", "Events waiting to be written to the store.", multiprocess_mode="livesum"
)

WriteHook = Callable[[AsyncSession, list[Event]], Awaitable[None]]

MAX_BATCH = 500  # events per transaction: bounds a transaction's size after an outage
WRITE_TIMEOUT = 30.0  # one batch; a black-holed connection must not stall the writer forever


class Store:
    """Storage of calls, finals and call events. See the module docstring for the write path."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        buffer_max: int = 10_000,
        batch_delay: float = 0.05,
        retry_max_delay: float = 5.0,
    ) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self.dialect = engine.dialect.name
        self.buffer_max = max(1, buffer_max)
        self.batch_delay = batch_delay
        self.retry_max_delay = retry_max_delay
        self.fts5 = False  # SQLite only: set at start when the FTS5 index exists
        self._queue: deque[tuple[int, Event]] = deque()
        self._inflight: list[tuple[int, Event]] = []
        self._hooks: list[WriteHook] = []
        self._seq = 0  # sequence number of the last submitted event
        self._done = 0  # every event up to this number is committed (or was dropped, with a log)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # flush() calls: (target, future)
        self._wake = asyncio.Event()  # something to write
        self._kick = asyncio.Event()  # flush/close: retry now instead of finishing the backoff
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._outage_since: float | None = None
        self._written = self._retries = self._dropped = self._rejected = 0
        self._last_error: str | None = None

    @classmethod
    def from_url(
        cls, url: str, *, buffer_max: int = 10_000, batch_delay: float = 0.05, retry_max_delay: float = 5.0
    ) -> Store:
        """A store for a SQLAlchemy async URL (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``)."""
        return cls(
            make_engine(url), buffer_max=buffer_max, batch_delay=batch_delay, retry_max_delay=retry_max_delay
        )

    # --- lifecycle

    async def start(self) -> None:
        """Apply migrations (raises if the database cannot be reached), then start the writer."""
        await migrate.upgrade(self.engine)
        if self.dialect == "sqlite":
            async with self.engine.connect() as conn:
                found = await conn.scalar(
                    sa.text("SELECT count(*) FROM sqlite_master WHERE name = 'utterances_fts'")
                )
            self.fts5 = bool(found)
        self._closing = self._closed = False
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered (for up to ``timeout`` seconds), stop the writer, dispose the engine."""
        self._closing = True
        self._wake.set()
        self._kick.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                left = len(self._queue) + len(self._inflight)
                log.error("store: %d event(s) not written within %.0f s of shutdown: lost", left, timeout)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._closed = True
        for _, waiter in self._waiters:  # flush() callers must not wait forever
            if not waiter.done():
                waiter.set_exception(RuntimeError("store closed before these events were written"))
        self._waiters = []
        await self.engine.dispose()

    # --- write path

    def submit(self, event: Event) -> None:
        """Queue ``event`` for the writer. Synchronous, O(1); never blocks, never raises."""
        try:
            if not storable(event):
                return
            if self._closed:
                self._dropped += 1
                DROPPED.labels(event.type).inc()
                log.error("store is closed: dropped %s of call %s", event.type, event.call_sid)
                return
            self._seq += 1
            self._queue.append((self._seq, with_event_id(event)))
            self._trim()
            BUFFERED.set(self.buffered)
            self._wake.set()
        except Exception:  # the audio path must not pay for a storage bug
            log.exception("store: could not queue %s", getattr(event, "type", event))

    def on_write(self, hook: WriteHook) -> None:
        """Run ``hook(session, events)`` inside every batch's transaction, after its rows are written.

        ``events`` are the batch's stored events in order (no partials). If the hook raises, the batch
        is rolled back with it and retried, so the hook may see the same events again (also after a
        commit whose answer was lost): write idempotently, e.g. ON CONFLICT DO NOTHING.
        """
        self._hooks.append(hook)

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or was dropped, with a log)."""
        if self._done >= self._seq:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._seq, waiter))
        self._kick.set()
        await waiter

    @property
    def healthy(self) -> bool:
        """False while writes are failing (events are buffered and retried)."""
        return self._outage_since is None

    @property
    def buffered(self) -> int:
        return len(self._queue) + len(self._inflight)

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "buffered": self.buffered,
            "written": self._written,
            "retries": self._retries,
            "dropped_on_overflow": self._dropped,
            "rejected": self._rejected,
            "last_error": self._last_error,
        }

    def _trim(self) -> None:
        """Drop the oldest waiting events beyond ``buffer_max`` (an event being written is not waiting)."""
        while len(self._queue) > self.buffer_max:
            seq, event = self._queue.popleft()
            self._dropped += 1
            DROPPED.labels(event.type).inc()
            log.error(
                "store buffer full (%d): dropped %s %s of call %s",
                self.buffer_max,
                event.type,
                event.event_id,
                event.call_sid,
            )
            if not self._inflight:
                self._advance(seq)

    def _advance(self, seq: int) -> None:
        if seq <= self._done:
            return
        self._done = seq
        waiting = []
        for target, waiter in self._waiters:
            if target <= seq:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.batch_delay > 0 and not self._kick.is_set() and len(self._queue) < MAX_BATCH:
                # gather a batch (flush and close cut the wait short)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.batch_delay)
            self._kick.clear()
            n = min(len(self._queue), MAX_BATCH)
            self._inflight = [self._queue.popleft() for _ in range(n)]
            try:
                await asyncio.wait_for(self._write_isolating(self._inflight), WRITE_TIMEOUT)
            except Exception as exc:
                # Keep the batch, in order, at the head of the buffer; what overflowed meanwhile goes.
                self._queue.extendleft(reversed(self._inflight))
                self._inflight = []
                self._trim()
                BUFFERED.set(self.buffered)
                self._failed(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), backoff)
                backoff = min(backoff * 2, self.retry_max_delay)
                continue
            self._inflight = []
            BUFFERED.set(self.buffered)
            backoff = 0.1
            if self._outage_since is not None:
                log.warning(
                    "store is back after %.1f s; %d event(s) still buffered",
                    time.monotonic() - self._outage_since,
                    self.buffered,
                )
                self._outage_since = None

    async def _write_isolating(self, batch: list[tuple[int, Event]]) -> None:
        """Write ``batch``; on a bad-data error, write its events one by one and skip the bad ones."""
        try:
            await self._write(batch)
            return
        except Exception as exc:
            if not _bad_data(exc):
                raise
            if len(batch) == 1:
                self._reject(batch[0], exc)
                return
        for i, item in enumerate(batch):
            try:
                await self._write([item])
            except Exception as exc:
                if not _bad_data(exc):
                    del batch[:i]  # written ones are done; the caller re-queues the rest
                    raise
                self._reject(item, exc)

    async def _write(self, batch: list[tuple[int, Event]]) -> None:
        events = [e for _, e in batch]
        async with self.sessionmaker() as session, session.begin():
            await write_batch(session, events)
            for hook in self._hooks:
                await hook(session, events)
        self._written += len(events)
        WRITTEN.inc(len(events))
        self._advance(batch[-1][0])

    def _reject(self, item: tuple[int, Event], exc: BaseException) -> None:
        seq, event = item
        self._rejected += 1
        REJECTED.inc()
        log.error(
            "store refused %s %s of call %s, skipped: %s",
            event.type,
            event.event_id,
            event.call_sid,
            _short(exc),
        )
        self._advance(seq)

    def _failed(self, exc: BaseException) -> None:
        self._retries += 1
        RETRIES.inc()
        metrics.SINK_RETRIES.labels(sink="store").inc()
        self._last_error = _short(exc)
        if self._outage_since is None:  # once per outage; the recovery line closes it
            self._outage_since = time.monotonic()
            log.error(
                "store unavailable, buffering (%d event(s), max %d) and retrying: %s",
                self.buffered,
                self.buffer_max,
                self._last_error,
            )
        else:
            log.debug("store still unavailable: %s", self._last_error)

    # --- queries

    async def list_calls(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        speaker: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of calls, newest first, and the number of calls that match."""
        where = queries.call_filters(
            self.dialect, fts5=self.fts5, since=since, until=until, status=status, speaker=speaker, q=q
        )
        page = (
            sa.select(*queries.CALL_COLUMNS)
            .where(*where)
            .order_by(calls.c.started_at.desc(), calls.c.call_sid)
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(calls).where(*where)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(page)).all()
            total = await conn.scalar(count)
        return [queries.call_dict(r) for r in rows], int(total or 0)

    async def get_call(self, call_sid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(*queries.CALL_COLUMNS).where(calls.c.call_sid == call_sid))
            ).first()
        return queries.call_dict(row) if row else None

    async def utterances(self, call_sid: str) -> list[dict[str, Any]]:
        """The finals of a call, by start time then event id."""
        stmt = (
            sa.select(utterances)
            .where(utterances.c.call_sid == call_sid)
            .order_by(utterances.c.start, utterances.c.event_id)
        )
        async with self.engine.connect() as conn:
            return [queries.utterance_dict(r) for r in await conn.execute(stmt)]

    async def call_events(self, call_sid: str) -> list[dict[str, Any]]:
        stmt = (
            sa.select(call_events).where(call_events.c.call_sid == call_sid).order_by(call_events.c.event_id)
        )
        async with self.engine.connect() as conn:
            return [queries.call_event_dict(r) for r in await conn.execute(stmt)]

    async def delete_call(self, call_sid: str) -> bool:
        """Delete a call and (by cascade) everything stored about it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(calls).where(calls.c.call_sid == call_sid))
        return result.rowcount > 0

    async def delete_older_than(self, days: int) -> int:
        """Retention: delete calls that started more than ``days`` days ago. ``days <= 0`` keeps all."""
        if days <= 0:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=days)
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(calls).where(calls.c.started_at < cutoff))
        if result.rowcount:
            log.info("retention: deleted %d call(s) started before %s", result.rowcount, cutoff)
        return result.rowcount

    async def finals_since(
        self, event_id: str, call_sid: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Stored finals after ``event_id`` ("" = from the start), in event id order, as
        ``event_to_dict`` of their TranscriptEvent: what a feed client resuming from ``event_id`` missed."""
        stmt = sa.select(utterances).where(utterances.c.event_id > event_id)
        if call_sid is not None:
            stmt = stmt.where(utterances.c.call_sid == call_sid)
        stmt = stmt.order_by(utterances.c.event_id).limit(limit)
        async with self.engine.connect() as conn:
            return [queries.final_event_dict(r) for r in await conn.execute(stmt)]


def make_engine(url: str) -> AsyncEngine:
    """An async engine tuned per backend (SQLite pragmas, PostgreSQL timeouts and pre-ping)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        # One shared connection for an in-memory database, or each connection would see its own.
        kwargs: dict[str, Any] = {"poolclass": StaticPool} if memory else {}
        engine = create_async_engine(parsed, **kwargs)
        sa_event.listen(engine.sync_engine, "connect", _sqlite_pragmas(memory))
        return engine
    if backend == "postgresql":
        return create_async_engine(
            parsed,
            pool_pre_ping=True,  # a server restart leaves dead pooled connections behind
            pool_timeout=5,
            connect_args={"timeout": 5, "command_timeout": 30},
        )
    raise ValueError(
        f"DATABASE_URL: unsupported database {backend!r} (use sqlite+aiosqlite or postgresql+asyncpg)"
    )


def _sqlite_pragmas(memory: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: cascades need it
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; far fewer fsyncs
        cursor.close()

    return on_connect


def _bad_data(exc: BaseException) -> bool:
    """An error no retry will fix (the batch is then split and the offending event skipped, logged).

    Everything else (connection refused or lost, database locked, timeouts…) is an outage: retried.
    """
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError, TypeError, ValueError, KeyError)):
        return True
    # Raised while binding parameters, before anything reached the database.
    return isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]
