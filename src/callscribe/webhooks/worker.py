"""Delivers the webhook outbox: in order per (endpoint, call), concurrently across them, with retries.

All state is in the ``webhook_outbox`` table, so a restarted worker (or another instance on the same
database) carries on where this one stopped. A row being sent is *leased*: its ``next_attempt_at``
is pushed ``lease`` seconds ahead while its request runs, so no other worker picks it up, and a
worker that dies mid-request leaves a row that becomes due again when the lease runs out.
The head of each (endpoint, call) is its pending row with the smallest event id; only heads are sent,
so a later event of a call waits while an earlier one is in flight or backing off. Dead rows are not
pending, so a dead-lettered event no longer holds back the rest of its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import Counter
from sqlalchemy import select, update
from sqlalchemy.orm import aliased

from callscribe import __version__
from callscribe.config import Settings
from callscribe.observability import metrics
from callscribe.storage.models import WebhookAttempt, WebhookOutbox
from callscribe.webhooks.outbox import Outbox, needs_transcript, with_transcript
from callscribe.webhooks.signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from callscribe.storage import Store

log = logging.getLogger(__name__)

ATTEMPTS = Counter("callscribe_webhook_attempts_total", "Webhook delivery attempts", ["outcome"])
DEAD = Counter("callscribe_webhook_dead_total", "Webhook deliveries dead-lettered")


def backoff(attempts: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempts``-th failure: "full jitter", uniform in
    ``[0, min(cap, base·2^attempts))``, so receivers coming back are not hit by a synchronized wave."""
    return rng() * min(cap, base * 2.0 ** min(attempts, 62))


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Job:
    """A claimed outbox row: what one attempt needs."""

    id: int
    endpoint: str
    event_id: str
    call_sid: str | None
    event_type: str
    body: str
    attempts: int


class WebhookWorker:
    """Queues webhooks with the events (``store.on_write``) and delivers them with httpx.

    ``start()`` begins delivering (rows left by an earlier process included); ``close()`` lets
    requests in flight finish (up to ``close_timeout``) and hands back the rows it could not finish.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        *,
        backoff_base: float = 5.0,
        backoff_cap: float = 3600.0,
        timeout: float = 10.0,
        concurrency: int = 16,
        poll_interval: float = 1.0,
        lease: float | None = None,
        close_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.max_attempts = settings.webhook_max_attempts
        self.secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.timeout = timeout
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        # longer than any attempt can take, so a live worker never loses its lease mid-request
        self.lease = lease if lease is not None else 2 * timeout + 5
        self.close_timeout = close_timeout if close_timeout is not None else timeout + 1
        self.outbox = Outbox(settings.webhook_urls, settings.webhook_events, on_commit=self.wake)
        store.on_write(self.outbox.enqueue)  # from now on, so no event is missed before start()
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[None], int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        if settings.webhook_urls and not self.secret:
            log.warning("WEBHOOK_SECRET is not set: webhooks are sent unsigned")

    def wake(self) -> None:
        """Look for due rows now rather than at the next poll (new rows were committed)."""
        self._wake.set()

    def _wake_in(self, delay: float) -> None:
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._wake.set()

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, headers={"User-Agent": f"callscribe-webhooks/{__version__}"}
            )
        self._task = asyncio.create_task(self._run(), name="webhook-worker")

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._inflight:
            tasks = list(self._inflight)
            ids = dict(self._inflight)
            _, unfinished = await asyncio.wait(tasks, timeout=self.close_timeout)
            for t in unfinished:
                t.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            await self._release([ids[t] for t in unfinished])
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before claiming: a wake during the claim is not lost
            free = self.concurrency - len(self._inflight)
            if free > 0:
                try:
                    jobs = await self._claim(free)
                except Exception:  # the database is away: try again at the next poll
                    log.exception("webhook outbox: claiming due deliveries failed")
                    jobs = []
                for job in jobs:
                    task = asyncio.create_task(self._deliver(job), name=f"webhook:{job.id}")
                    self._inflight[task] = job.id
                    task.add_done_callback(self._done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
        self._wake.set()  # the next event of that call may now be due

    async def _claim(self, limit: int) -> list[_Job]:
        """Lease up to ``limit`` due heads of their (endpoint, call)."""
        now = utcnow()
        o, earlier = WebhookOutbox, aliased(WebhookOutbox)
        blocked = (
            select(earlier.id)
            .where(
                earlier.status == "pending",
                earlier.endpoint == o.endpoint,
                earlier.call_sid == o.call_sid,
                earlier.event_id < o.event_id,
            )
            .exists()
        )
        query = (
            select(o.id, o.endpoint, o.event_id, o.call_sid, o.event_type, o.body, o.attempts)
            .where(o.status == "pending", o.next_attempt_at <= now, ~blocked)
            .order_by(o.next_attempt_at, o.id)
            .limit(limit)
        )
        async with self.store.sessionmaker() as session:
            async with session.begin():
                candidates = [_Job(*row) for row in (await session.execute(query)).all()]
            jobs = []
            for job in candidates:
                # compare-and-set: of two workers that saw the same due row, one gets it
                async with session.begin():
                    result = await session.execute(
                        update(o)
                        .where(o.id == job.id, o.status == "pending", o.next_attempt_at <= now)
                        .values(next_attempt_at=now + timedelta(seconds=self.lease))
                    )
                if result.rowcount == 1:
                    jobs.append(job)
        return jobs

    async def _release(self, ids: list[int]) -> None:
        """Make leased rows due again at once (this worker stops before finishing them)."""
        if not ids:
            return
        try:
            async with self.store.sessionmaker() as session, session.begin():
                await session.execute(
                    update(WebhookOutbox)
                    .where(WebhookOutbox.id.in_(ids), WebhookOutbox.status == "pending")
                    .values(next_attempt_at=utcnow())
                )
        except Exception:
            log.exception("webhook outbox: releasing %d lease(s) failed; they expire by themselves", len(ids))

    async def _deliver(self, job: _Job) -> None:
        body = job.body
        if needs_transcript(job.event_type, body):
            # built now, not when queued: every final of the call is stored by the time its
            # call.ended is the head of the call; kept, so retries send the same bytes
            body = with_transcript(body, await self.store.utterances(job.call_sid))
            async with self.store.sessionmaker() as session, session.begin():
                await session.execute(
                    update(WebhookOutbox).where(WebhookOutbox.id == job.id).values(body=body)
                )
        attempt = job.attempts + 1
        headers = {
            "Content-Type": "application/json",
            "Callscribe-Event": job.event_type,
            "Callscribe-Delivery": str(job.id),  # the id of /api/webhooks/deliveries
            "Callscribe-Attempt": str(attempt),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        assert self._client is not None
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange (a slow drip too),
            # which keeps every attempt well inside its lease
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(
                    job.endpoint, content=body.encode(), headers=headers, timeout=self.timeout
                )
            status_code = response.status_code
            if not response.is_success:
                error = f"HTTP {status_code}: {response.text[:200]}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timeout after {self.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = int((time.perf_counter() - started) * 1000)
        await self._record(job, attempt, status_code, error, duration_ms)

    async def _record(
        self, job: _Job, attempt: int, status_code: int | None, error: str | None, duration_ms: int
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {"attempts": attempt, "last_error": error}
        delay = 0.0
        if error is None:
            values.update(status="delivered", delivered_at=now)
        elif attempt >= self.max_attempts:
            values.update(status="dead")
        else:
            delay = backoff(attempt, self.backoff_base, self.backoff_cap)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        async with self.store.sessionmaker() as session, session.begin():
            session.add(
                WebhookAttempt(
                    outbox_id=job.id,
                    attempt=attempt,
                    at=now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            # pending only: had this attempt outlived its lease, another worker may own the row now
            await session.execute(
                update(WebhookOutbox)
                .where(WebhookOutbox.id == job.id, WebhookOutbox.status == "pending")
                .values(**values)
            )
        what = f"webhook {job.event_type} of call {job.call_sid} to {job.endpoint}"
        if error is None:
            ATTEMPTS.labels("delivered").inc()
        elif values.get("status") == "dead":
            ATTEMPTS.labels("failed").inc()
            DEAD.inc()
            metrics.SINK_ERRORS.labels(sink="webhook").inc()
            log.error("%s is dead after %d attempts: %s", what, attempt, error)
        else:
            ATTEMPTS.labels("failed").inc()
            metrics.SINK_RETRIES.labels(sink="webhook").inc()
            log.warning("%s failed (attempt %d, retry in %.1f s): %s", what, attempt, delay, error)
            # look again when it is due, not at the first poll after that
            self._wake_in(delay)
