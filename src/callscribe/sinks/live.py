"""The live feed: a sink that hands events to every watcher of ``/live`` (all calls or one call)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import orjson

from callscribe.events import Event, TranscriptEvent, event_to_dict
from callscribe.sinks.base import Sink


@dataclass(eq=False)
class Subscription:
    """One watcher. A slow watcher loses partials, never finals; past ``max_pending`` it is cut off."""

    call_sid: str | None
    max_partials: int = 20
    max_pending: int = 2000
    queue: deque[tuple[bool, bytes]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    partials_pending: int = 0
    dropped_partials: int = 0
    overflowed: bool = False

    def offer(self, partial: bool, payload: bytes) -> None:
        if partial and self.partials_pending >= self.max_partials:
            self.dropped_partials += 1
            return
        if len(self.queue) >= self.max_pending:
            self.overflowed = True  # the watcher is told and closed; it can reconnect
        else:
            self.queue.append((partial, payload))
            self.partials_pending += partial
        self.wake.set()

    async def next(self) -> bytes | None:
        """The next JSON message; ``None`` when the watcher fell too far behind."""
        while not self.queue:
            if self.overflowed:
                return None
            self.wake.clear()
            await self.wake.wait()
        partial, payload = self.queue.popleft()
        self.partials_pending -= partial
        return payload


class LiveHub(Sink):
    """Fans events out to live subscribers; serialises each event once, whatever the audience."""

    name = "live"

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, call_sid: str | None = None) -> Subscription:
        sub = Subscription(call_sid)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every watcher has been sent what it was offered (the drain calls this)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(s.queue and not s.overflowed for s in self._subs):
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last send_text() in flight
        return True

    @property
    def watchers(self) -> int:
        return len(self._subs)

    async def handle(self, event: Event) -> None:
        if self._subs:
            partial = isinstance(event, TranscriptEvent) and not event.is_final
            self.broadcast(event_to_dict(event), partial)

    def broadcast(self, data: dict, partial: bool) -> None:
        """Offer one event (already a dict, e.g. from another instance) to its watchers."""
        if not self._subs:
            return
        payload = orjson.dumps(data)
        call_sid = data.get("call_sid")
        for sub in self._subs:
            if sub.call_sid is None or sub.call_sid == call_sid:
                sub.offer(partial, payload)
