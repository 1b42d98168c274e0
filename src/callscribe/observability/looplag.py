"""Event-loop lag: how late the loop runs a timer, i.e. how long something blocked it.

A blocked loop delays every call's audio at once, so this is the first figure to look at when
latency rises. :class:`LoopLagMonitor` sleeps ``interval`` seconds in a task, over and over, and
records how much later than asked it woke up in ``callscribe_event_loop_lag_seconds``; ``.last``
and ``.max`` are for ``/healthz``. A block of B seconds shows up as a lag of at least
B − ``interval`` (the part of the block that overlapped the sleep is not late).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

_WARN_EVERY = 10.0  # seconds between two "event loop blocked" warnings


class LoopLagMonitor:
    """``start()`` in the running loop (e.g. in the lifespan), ``await stop()`` at shutdown."""

    def __init__(self, interval: float = 0.25, *, histogram: Any = None, warn_above: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.warn_above = warn_above
        self.last = 0.0  # lag of the latest sample (s)
        self.max = 0.0  # largest lag since start (s)
        self.samples = 0
        self._warned_at = float("-inf")
        self._histogram = histogram
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sampling in the running event loop (idempotent)."""
        if self.running:
            return
        if self._histogram is None:
            from callscribe.observability import metrics

            self._histogram = metrics.EVENT_LOOP_LAG
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop sampling and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def record(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.last = lag
        self.max = max(self.max, lag)
        self.samples += 1
        if self._histogram is not None:
            self._histogram.observe(lag)
        if lag >= self.warn_above:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:  # a stuck loop must not flood the log too
                self._warned_at = now
                log.warning("event loop blocked: a timer ran %.3f s late", lag)

    def snapshot(self) -> dict[str, float]:
        """For ``/healthz``: the latest and the largest lag, in milliseconds."""
        return {"last_ms": round(self.last * 1000, 1), "max_ms": round(self.max * 1000, 1)}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.record(loop.time() - asked)
