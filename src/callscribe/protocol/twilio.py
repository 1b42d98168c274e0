"""Twilio Media Streams, as a pure state machine: WebSocket text in, typed events out.

No sockets and no clocks here (the h11/wsproto style): the ASGI handler feeds each message to
:meth:`TwilioStream.receive` and acts on the events it returns. Bad input never raises and never
ends the call: it comes back as a :class:`Malformed` event and is counted.

Audio comes out per track, *contiguous from stream time 0*: ``media.timestamp`` (ms since the
stream started) places each payload, gaps are filled with μ-law silence (0xFF) and duplicate or
late frames are trimmed, so byte ``n`` of a track is always at ``n / 8000`` seconds and the audio
clock never drifts (../shared/reference/protocols.md §1.4).
"""

from __future__ import annotations

import binascii
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from callscribe.events import CallInfo, Track

BYTES_PER_MS = 8  # 8 kHz, 8-bit μ-law
SILENCE_BYTE = b"\xff"


class State(StrEnum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Started:
    call: CallInfo
    media_format: dict[str, object]


@dataclass(frozen=True, slots=True)
class Audio:
    """μ-law bytes of one track starting at byte ``offset`` of that track (gap fill included)."""

    track: Track
    data: bytes
    offset: int
    filled: int = 0  # how many leading bytes of ``data`` are silence standing in for lost frames


@dataclass(frozen=True, slots=True)
class Dtmf:
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stopped:
    reason: str  # "stop" (Twilio's message) or "closed" (socket closed without one)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that could not be used; ``kind`` is a short stable label for counters."""

    kind: str
    detail: str


TwilioEvent = Connected | Started | Audio | Dtmf | Mark | Stopped | Malformed

_TRACKS = {"inbound": Track.INBOUND, "outbound": Track.OUTBOUND}
_TRACK_ALIASES = {"inbound_track": Track.INBOUND, "outbound_track": Track.OUTBOUND, **_TRACKS}


@dataclass(slots=True)
class TrackClock:
    """Where a track's next byte belongs on the audio clock."""

    position: int = 0  # bytes emitted so far (= next expected offset)
    frames: int = 0


@dataclass(slots=True)
class StreamCounters:
    """What happened on one stream; reported when the call ends."""

    messages: int = 0
    media_frames: int = 0
    media_bytes: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    leading_fill_bytes: int = 0
    duplicates: int = 0
    late_bytes_dropped: int = 0
    malformed: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        out = {k: getattr(self, k) for k in ("messages", "media_frames", "media_bytes", "gaps", "gap_bytes")}
        out |= {
            "leading_fill_bytes": self.leading_fill_bytes,
            "duplicates": self.duplicates,
            "late_bytes_dropped": self.late_bytes_dropped,
        }
        out["malformed"] = sum(self.malformed.values())
        out |= {f"malformed.{kind}": n for kind, n in sorted(self.malformed.items())}
        return out


class TwilioStream:
    """One Media Streams WebSocket connection, from ``connected`` to ``stop``.

    ``jitter_ms``: timestamp differences this small are treated as contiguous (no fill, no trim).
    ``max_gap_ms``: a larger timestamp jump is not filled (it would be a broken clock, not lost
    frames); the audio continues contiguously and the jump is reported as malformed.
    ``max_frame_bytes``: payloads larger than this are refused as malformed.
    """

    def __init__(
        self,
        *,
        speakers: dict[Track, str] | None = None,
        jitter_ms: int = 10,
        max_gap_ms: int = 60_000,
        max_frame_bytes: int = 16_000,
    ) -> None:
        self.state = State.AWAITING_START
        self.call: CallInfo | None = None
        self.counters = StreamCounters()
        self.clocks: dict[Track, TrackClock] = {}
        self._speakers = speakers
        self._jitter = jitter_ms * BYTES_PER_MS
        self._max_gap = max_gap_ms * BYTES_PER_MS
        self._max_frame = max_frame_bytes

    @property
    def call_sid(self) -> str:
        return self.call.call_sid if self.call else ""

    def duration(self) -> float:
        """Seconds of audio on the longest track so far."""
        return max((c.position for c in self.clocks.values()), default=0) / (BYTES_PER_MS * 1000)

    # -- input --------------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[TwilioEvent]:
        """Events for one WebSocket message (usually one; none for an ignored one)."""
        self.counters.messages += 1
        if self.state is State.STOPPED:
            return [self._bad("after_stop", "message after stop")]
        if isinstance(message, bytes) and not message.startswith(b"{"):
            return [self._bad("binary", f"binary frame of {len(message)} bytes")]
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return [self._bad("invalid_json", str(exc))]
        if not isinstance(msg, dict):
            return [self._bad("not_object", f"JSON {type(msg).__name__}, expected an object")]
        kind = msg.get("event")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return [self._bad("unknown_event", f"event={kind!r}")]
        try:
            return handler(self, msg)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [self._bad(f"bad_{kind}", f"{type(exc).__name__}: {exc}")]

    def close(self) -> list[TwilioEvent]:
        """The socket closed: a stream that never sent ``stop`` is stopped now."""
        if self.state is State.STOPPED:
            return []
        was_streaming = self.state is State.STREAMING
        self.state = State.STOPPED
        return [Stopped("closed")] if was_streaming else []

    # -- handlers -----------------------------------------------------------------------------

    def _on_connected(self, msg: dict) -> list[TwilioEvent]:
        return [Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))]

    def _on_start(self, msg: dict) -> list[TwilioEvent]:
        if self.state is not State.AWAITING_START:
            return [self._bad("duplicate_start", "second start message ignored")]
        start = msg["start"]
        stream_sid = start.get("streamSid") or msg["streamSid"]
        call_sid = start["callSid"]
        if not isinstance(call_sid, str) or not isinstance(stream_sid, str) or not call_sid:
            raise ValueError("callSid/streamSid must be non-empty strings")
        raw_tracks = start.get("tracks") or ["inbound"]
        tracks = tuple(dict.fromkeys(_TRACK_ALIASES[t] for t in raw_tracks))
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise TypeError("customParameters must be an object")
        fmt = start.get("mediaFormat") or {}
        kwargs = {"speakers": dict(self._speakers)} if self._speakers else {}
        self.call = CallInfo(
            call_sid=call_sid,
            stream_sid=stream_sid,
            account_sid=str(start.get("accountSid", "")),
            tracks=tracks,
            custom_parameters={str(k): str(v) for k, v in params.items()},
            **kwargs,
        )
        self.clocks = {t: TrackClock() for t in tracks}
        self.state = State.STREAMING
        events: list[TwilioEvent] = [Started(self.call, dict(fmt))]
        if fmt and (fmt.get("encoding") != "audio/x-mulaw" or fmt.get("sampleRate") != 8000):
            # Twilio only ever sends 8 kHz μ-law; anything else is reported and read as that anyway.
            events.append(self._bad("media_format", f"unexpected mediaFormat {fmt}"))
        return events

    def _on_media(self, msg: dict) -> list[TwilioEvent]:
        if self.state is not State.STREAMING:
            return [self._bad("media_before_start", "media before start")]
        media = msg["media"]
        track = _TRACKS.get(media.get("track", "inbound"))
        if track is None:
            return [self._bad("unknown_track", f"track={media.get('track')!r}")]
        clock = self.clocks.get(track)
        if clock is None:  # a track that start did not announce: accept it rather than lose audio
            clock = self.clocks[track] = TrackClock()
        timestamp = int(media["timestamp"])
        if timestamp < 0:
            raise ValueError(f"negative timestamp {timestamp}")
        try:
            payload = binascii.a2b_base64(media["payload"], strict_mode=True)
        except (binascii.Error, TypeError) as exc:
            return [self._bad("bad_base64", str(exc))]
        if not payload:
            return [self._bad("empty_payload", "media with an empty payload")]
        if len(payload) > self._max_frame:
            return [self._bad("frame_too_large", f"{len(payload)} bytes > {self._max_frame}")]
        self.counters.media_frames += 1
        self.counters.media_bytes += len(payload)
        return self._place(track, clock, timestamp, payload)

    def _place(self, track: Track, clock: TrackClock, timestamp: int, payload: bytes) -> list[TwilioEvent]:
        """Put ``payload`` at ``timestamp`` on the track's clock: fill gaps, trim overlaps."""
        offset = timestamp * BYTES_PER_MS
        delta = offset - clock.position
        events: list[TwilioEvent] = []
        filled = 0
        if delta > self._max_gap:
            events.append(self._bad("clock_jump", f"{track} timestamp jumped {delta // BYTES_PER_MS} ms"))
        elif delta > self._jitter:
            filled = delta
            if clock.frames:  # a late-starting track (outbound while <Dial> rings) is not a gap
                self.counters.gaps += 1
                self.counters.gap_bytes += delta
            else:
                self.counters.leading_fill_bytes += delta
        elif delta < -self._jitter:
            overlap = -delta
            if overlap >= len(payload):
                self.counters.duplicates += 1
                self.counters.late_bytes_dropped += len(payload)
                return events
            payload = payload[overlap:]  # partly late: keep only the part after what we have
            self.counters.late_bytes_dropped += overlap
        clock.frames += 1
        data = SILENCE_BYTE * filled + payload if filled else payload
        events.append(Audio(track, data, clock.position, filled))
        clock.position += len(data)
        return events

    def _on_dtmf(self, msg: dict) -> list[TwilioEvent]:
        dtmf = msg["dtmf"]
        return [Dtmf(str(dtmf.get("track", "inbound_track")), str(dtmf["digit"]))]

    def _on_mark(self, msg: dict) -> list[TwilioEvent]:
        return [Mark(str(msg["mark"]["name"]))]

    def _on_stop(self, msg: dict) -> list[TwilioEvent]:
        if self.state is State.AWAITING_START:
            self.state = State.STOPPED
            return [self._bad("stop_before_start", "stop before start")]
        self.state = State.STOPPED
        return [Stopped("stop")]

    def _bad(self, kind: str, detail: str) -> Malformed:
        self.counters.malformed[kind] += 1
        return Malformed(kind, detail)


_HANDLERS = {
    "connected": TwilioStream._on_connected,
    "start": TwilioStream._on_start,
    "media": TwilioStream._on_media,
    "dtmf": TwilioStream._on_dtmf,
    "mark": TwilioStream._on_mark,
    "stop": TwilioStream._on_stop,
}
