"""The one small async interface every speech-to-text engine implements.

An :class:`Engine` lives for the whole process (it owns what calls share: a model, an HTTP client,
a decode pool). For each Twilio stream it opens one :class:`EngineSession`, which is never shared
between calls. The bridge drives a session like this::

    session = engine.open(call)            # raises EngineBusy when the engine is at capacity
    await session.start()                  # must return quickly; slow set-up runs in the background
    session.feed(Track.INBOUND, ulaw)      # many times; never blocks, never raises on audio
    async for event in session.events():   # TranscriptEvent / CallError, until finished
        ...
    await session.finish(timeout=5.0)      # flush: the last finals arrive before events() ends

Audio fed to a session is 8 kHz μ-law, per track, contiguous from the start of the stream (the
Twilio protocol layer fills gaps with silence), so byte ``n`` of a track is at ``n / 8000`` s.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from callscribe.events import CallError, CallInfo, Track, TranscriptEvent

EngineOutput = TranscriptEvent | CallError


class EngineBusy(Exception):
    """The engine cannot take another call now (capacity reached); the call should go elsewhere."""


class EngineSession(ABC):
    """One call's transcription session. Subclasses call :meth:`_emit` and :meth:`_close_events`."""

    def __init__(self, call: CallInfo) -> None:
        self.call = call
        self._queue: asyncio.Queue[EngineOutput | None] = asyncio.Queue()
        self._events_closed = False

    @abstractmethod
    async def start(self) -> None:
        """Begin the session; must not wait on the network (audio fed meanwhile is buffered)."""

    @abstractmethod
    def feed(self, track: Track, audio: bytes) -> None:
        """Take μ-law audio of one track; contiguous with what was fed before on that track."""

    @abstractmethod
    async def finish(self, timeout: float) -> None:
        """No more audio: flush the last finals within ``timeout`` seconds, then end :meth:`events`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release everything at once (used when a call is torn down without a drain)."""

    @property
    def counters(self) -> dict[str, int]:
        """Per-session counters (bytes sent, reconnects…) reported when the call ends."""
        return {}

    async def events(self) -> AsyncIterator[EngineOutput]:
        """Transcript and error events, in the order produced; ends once the session is finished."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def _emit(self, event: EngineOutput) -> None:
        if not self._events_closed:
            self._queue.put_nowait(event)

    def _close_events(self) -> None:
        if not self._events_closed:
            self._events_closed = True
            self._queue.put_nowait(None)


class Engine(ABC):
    """A process-wide engine: shared resources, admission control, and a factory of sessions."""

    name: str = "engine"

    async def startup(self) -> None:  # noqa: B027 - optional hook
        """Load models / open clients. Called once before the first call."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources. Called once at exit."""

    @abstractmethod
    def open(self, call: CallInfo) -> EngineSession:
        """A new session for ``call``; raises :class:`EngineBusy` beyond capacity."""

    def describe(self) -> dict[str, object]:
        """What this engine is, for ``/healthz`` and logs (no secrets)."""
        return {"engine": self.name}
