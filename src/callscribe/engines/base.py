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

**Counters every session reports** (:attr:`EngineSession.counters`; :class:`AudioLedger` keeps them).
All are μ-law bytes summed over the tracks fed (160 bytes = one 20 ms Twilio frame of one track):

- ``bytes_fed``: every byte passed to :meth:`EngineSession.feed`, whatever became of it;
- ``bytes_delivered``: audio the engine has confirmed or consumed (Gladia: acknowledged; local:
  decoded into a final, judged non-speech, or silence between utterances);
- ``bytes_dropped``: audio that will never be transcribed, and ``bytes_dropped.<reason>`` per reason
  (:data:`DROP_REASONS`); every drop is also logged, and a new drop condition is a :class:`CallError`;
- ``bytes_pending``: held by the session, neither delivered nor dropped yet (0 once :meth:`finish`
  or :meth:`aclose` has returned: what was still held then is dropped as ``drain_timeout``/``aborted``).

Invariant, at any time: ``bytes_fed == bytes_delivered + bytes_dropped + bytes_pending`` and
``bytes_dropped == sum(bytes_dropped.<reason>)`` (:func:`audio_balance` returns the difference).
Recovery is counted too: ``restarts`` (the engine's stream was restarted: a Gladia reconnect or a
new Gladia session, a local re-decode), with engine-specific detail beside it (``reconnects``,
``sessions``…). Engines may report more keys; these are the ones a bridge can rely on.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from callscribe.events import CallError, CallInfo, Track, TranscriptEvent

EngineOutput = TranscriptEvent | CallError

BYTES_FED = "bytes_fed"
BYTES_DELIVERED = "bytes_delivered"
BYTES_DROPPED = "bytes_dropped"
BYTES_PENDING = "bytes_pending"
RESTARTS = "restarts"

DROP_REASONS: dict[str, str] = {
    "ignored_track": "a track the stream does not carry",
    "closed": "fed after finish() or aclose()",
    "late": "arrived for stream time already padded with silence (2-channel alignment)",
    "buffer_full": "the engine was behind or down longer than the buffer holds",
    "engine_failed": "the engine failed for good (refused the call, kept failing on this audio)",
    "drain_timeout": "still held when finish()'s deadline passed",
    "aborted": "still held when the session was torn down without a drain (aclose)",
    "partial_frame": "a trailing fragment shorter than one 20 ms frame",
}


class AudioLedger:
    """Where every fed byte went: delivered, dropped (with a reason) or still pending.

    ``bytes_pending`` is derived (fed − delivered − dropped); sessions that can measure what they
    hold report it as well (``bytes_held``) so tests can check the two agree.
    """

    __slots__ = ("delivered", "dropped", "fed")

    def __init__(self) -> None:
        self.fed = 0
        self.delivered = 0
        self.dropped: dict[str, int] = {}

    def add_fed(self, n: int) -> None:
        self.fed += n

    def deliver(self, n: int) -> None:
        self.delivered += n

    def drop(self, reason: str, n: int) -> None:
        if n > 0:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def pending(self) -> int:
        return self.fed - self.delivered - self.dropped_total

    def counters(self) -> dict[str, int]:
        out = {
            BYTES_FED: self.fed,
            BYTES_DELIVERED: self.delivered,
            BYTES_DROPPED: self.dropped_total,
            BYTES_PENDING: self.pending,
        }
        for reason, n in sorted(self.dropped.items()):
            out[f"{BYTES_DROPPED}.{reason}"] = n
        return out


def audio_balance(counters: dict[str, int]) -> int:
    """``fed − delivered − dropped − pending`` (0 when the counters reconcile), also checking that
    the per-reason drops add up (their difference is added)."""
    fed = counters.get(BYTES_FED, 0)
    dropped = counters.get(BYTES_DROPPED, 0)
    reasons = sum(v for k, v in counters.items() if k.startswith(BYTES_DROPPED + "."))
    balance = fed - counters.get(BYTES_DELIVERED, 0) - dropped - counters.get(BYTES_PENDING, 0)
    return balance + (dropped - reasons)


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
        """Per-session counters reported when the call ends: at least the standard audio keys of the
        module docstring (``bytes_fed``, ``bytes_delivered``, ``bytes_dropped[.<reason>]``,
        ``bytes_pending``, ``restarts``), plus engine-specific ones."""
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
