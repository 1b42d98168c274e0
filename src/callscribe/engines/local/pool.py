"""A bounded priority pool of decode threads shared by all calls.

Finals run before partials, first come first served. Partials are coalesced: at most one waits per
key (a call's track) and it reads the newest audio when it starts, so under load partials thin out
instead of piling up, while finals keep their latency. Among waiting partials the oldest request
goes first, which is round-robin between calls; a key never has two partials running at once.

A job that raises fails only its own future. A worker thread that dies (a job raised a
``BaseException`` such as ``SystemExit``, or the pool itself hit a bug) fails the job it was running
with :class:`WorkerDied` and is replaced by a new thread (counted in :attr:`DecodePool.restarts`),
so the pool keeps its size and no future is left waiting for ever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from callscribe.engines.local import metrics

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The decode thread running this job died; the job may be submitted again."""


@dataclass(slots=True)
class _Job:
    kind: str
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    key: Hashable = None
    queued_at: float = field(default_factory=time.monotonic)


class DecodePool:
    """``workers`` threads, each running one decode at a time."""

    def __init__(self, workers: int, name: str = "callscribe-decode") -> None:
        self.workers = workers
        self._name = name
        self._cond = threading.Condition()
        self._finals: deque[_Job] = deque()
        self._partials: dict[Hashable, _Job] = {}  # insertion order = request order
        self._running: set[Hashable] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawned = 0
        self.restarts = 0  # worker threads replaced after dying

    def start(self) -> None:
        with self._cond:
            for _ in range(self.workers):
                self._spawn()

    def alive(self) -> int:
        """Worker threads running now."""
        with self._cond:
            return sum(t.is_alive() for t in self._threads)

    def _spawn(self) -> None:
        """Start one worker (call with the lock held)."""
        t = threading.Thread(target=self._run_worker, name=f"{self._name}-{self._spawned}", daemon=True)
        self._spawned += 1
        self._threads.append(t)
        t.start()

    def _run_worker(self) -> None:
        try:
            self._work()
        except BaseException:
            log.exception("decode worker %s died; starting a replacement", threading.current_thread().name)
            with self._cond:
                self._threads.remove(threading.current_thread())
                if not self._closed:
                    self.restarts += 1
                    self._spawn()

    def close(self) -> None:
        """Stop the workers after their current decode; waiting jobs are cancelled."""
        with self._cond:
            self._closed = True
            dropped = [*self._finals, *self._partials.values()]
            self._finals.clear()
            self._partials.clear()
            self._update_depth()
            self._cond.notify_all()
            threads = list(self._threads)
        for job in dropped:
            job.loop.call_soon_threadsafe(_cancel, job.future)
        for t in threads:
            t.join()
        with self._cond:
            self._threads.clear()

    def submit_final(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in a worker before any partial; the future gets its result."""
        job = self._job("final", fn, None)
        with self._cond:
            self._check_open()
            self._finals.append(job)
            self._update_depth()
            self._cond.notify()
        return job.future

    def submit_partial(self, key: Hashable, fn: Callable[[], Any]) -> asyncio.Future[Any] | None:
        """Queue a partial for ``key``; None when one is already waiting (it will read the newest audio)."""
        with self._cond:
            self._check_open()
            if key in self._partials:
                metrics.PARTIALS_SKIPPED.inc()
                return None
            job = self._job("partial", fn, key)
            self._partials[key] = job
            self._update_depth()
            self._cond.notify()
        return job.future

    def drop_partials(self, keys: set[Hashable]) -> None:
        """Forget waiting partials of ``keys`` (a call that ends)."""
        with self._cond:
            dropped = [self._partials.pop(k) for k in keys if k in self._partials]
            self._update_depth()
        for job in dropped:
            job.loop.call_soon_threadsafe(_cancel, job.future)

    def depth(self) -> tuple[int, int]:
        """(finals, partials) waiting."""
        with self._cond:
            return len(self._finals), len(self._partials)

    def _job(self, kind: str, fn: Callable[[], Any], key: Hashable) -> _Job:
        loop = asyncio.get_running_loop()
        return _Job(kind, fn, loop.create_future(), loop, key)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("decode pool is closed")

    def _update_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels("final").set(len(self._finals))
        metrics.QUEUE_DEPTH.labels("partial").set(len(self._partials))

    def _next(self) -> _Job | None:
        """Highest-priority runnable job, or None (call with the lock held)."""
        if self._finals:
            return self._finals.popleft()
        for key, job in self._partials.items():
            if key not in self._running:
                del self._partials[key]
                self._running.add(key)
                return job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                while job is None and not self._closed:
                    self._cond.wait()
                    job = self._next()
                if job is None:
                    return
                self._update_depth()
            metrics.QUEUE_WAIT_SECONDS.labels(job.kind).observe(time.monotonic() - job.queued_at)
            try:
                if job.future.cancelled():
                    continue
                try:
                    result = job.fn()
                except Exception as exc:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                except BaseException as exc:  # this thread is going down: its job must not hang
                    died = WorkerDied(f"decode worker died running a {job.kind} decode: {exc!r}")
                    job.loop.call_soon_threadsafe(_set_exception, job.future, died)
                    raise
                else:
                    job.loop.call_soon_threadsafe(_set_result, job.future, result)
            except RuntimeError:  # the job's event loop is closed: nobody waits for it
                log.debug("dropped a %s decode result: its event loop is closed", job.kind)
            finally:
                if job.key is not None:
                    with self._cond:
                        self._running.discard(job.key)
                        self._cond.notify()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
