"""Delivers every event to every sink without letting a slow sink slow the audio path or the others."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from callscribe.events import Event, TranscriptEvent, with_event_id
from callscribe.observability import metrics
from callscribe.sinks.base import Sink

log = logging.getLogger(__name__)


def _droppable(event: Event) -> bool:
    return isinstance(event, TranscriptEvent) and not event.is_final


class _SinkWorker:
    """One sink's queue and task. Partials beyond ``max_partials_pending`` are dropped (counted);
    finals, call events and errors are never dropped."""

    def __init__(self, sink: Sink, max_partials_pending: int) -> None:
        self.sink = sink
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.max_partials = max_partials_pending
        self.partials_pending = 0
        self.dropped_partials = 0
        self.errors = 0
        self.delivered = 0
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.busy = False

    def put(self, event: Event) -> None:
        if _droppable(event):
            if self.partials_pending >= self.max_partials:
                self.dropped_partials += 1
                return
            self.partials_pending += 1
        self.queue.append(event)
        self.wake.set()

    async def run(self) -> None:
        while True:
            while self.queue:
                event = self.queue.popleft()
                if _droppable(event):
                    self.partials_pending -= 1
                self.busy = True
                try:
                    await self.sink.handle(event)
                    self.delivered += 1
                except Exception:
                    self.errors += 1
                    metrics.SINK_ERRORS.labels(sink=self.sink.name).inc()
                    log.exception(
                        "sink %s failed on %s for call %s",
                        self.sink.name,
                        event.type,
                        getattr(event, "call_sid", "?"),
                    )
                finally:
                    self.busy = False
            if self.closing:
                return
            self.wake.clear()
            await self.wake.wait()


class FanOut:
    """``publish`` is synchronous and O(sinks): safe to call from the audio path."""

    def __init__(self, sinks: list[Sink], *, max_partials_pending: int = 50) -> None:
        self._workers = [_SinkWorker(s, max_partials_pending) for s in sinks]

    @property
    def sinks(self) -> list[Sink]:
        return [w.sink for w in self._workers]

    async def start(self) -> None:
        for w in self._workers:
            await w.sink.start()
            w.task = asyncio.create_task(w.run(), name=f"sink:{w.sink.name}")

    def publish(self, event: Event) -> None:
        event = with_event_id(event)
        for w in self._workers:
            w.put(event)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            w.sink.name: {
                "delivered": w.delivered,
                "pending": len(w.queue),
                "errors": w.errors,
                "dropped_partials": w.dropped_partials,
            }
            for w in self._workers
        }

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every sink has handled everything published so far; False on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(w.queue or w.busy for w in self._workers):
            if loop.time() >= end:
                log.error("fan-out: sinks still busy after %.0f s: %s", timeout, self.stats())
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then close every sink."""
        for w in self._workers:
            w.closing = True
            w.wake.set()
        tasks = [w.task for w in self._workers if w.task]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.error("sink %s did not drain within %.0f s", t.get_name(), timeout)
                t.cancel()
        for w in self._workers:
            try:
                await w.sink.close()
            except Exception:
                log.exception("closing sink %s failed", w.sink.name)
