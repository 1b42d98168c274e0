"""Exactly what Twilio sends on a Media Streams WebSocket, built as plain data (no I/O).

A :class:`Scenario` (the audio of one or two tracks plus knobs: dropped frames, a late agent,
no ``stop``) becomes a :class:`CallPlan`: the ``connected`` and ``start`` messages, the ordered
:class:`MediaFrame` list (both tracks interleaved frame by frame) and the ``stop`` message. The
runner only paces and sends them. Shapes follow protocols.md §1.3–1.4: every counter is a JSON
string, ``sequenceNumber`` is socket-wide, ``chunk`` counts per track, ``timestamp`` is ms since
the stream started and jumps where frames were dropped.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twilio.request_validator import RequestValidator

from callscribe.audio.mulaw import SILENCE
from callscribe.events import Track

FRAME_MS = 20
BYTES_PER_MS = 8  # μ-law, 8 kHz, one byte per sample
FRAME_BYTES = FRAME_MS * BYTES_PER_MS


def new_sid(prefix: str) -> str:
    """A Twilio-looking SID: two-letter prefix + 32 lowercase hex digits."""
    return prefix + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class CallIds:
    """The SIDs one simulated call uses."""

    account_sid: str
    call_sid: str
    stream_sid: str

    @classmethod
    def new(cls, account_sid: str | None = None) -> CallIds:
        return cls(account_sid or new_sid("AC"), new_sid("CA"), new_sid("MZ"))


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One ``media`` message to send."""

    track: Track
    index: int  # position in its track's timeline (0 = its first frame); dropped frames keep theirs
    timestamp_ms: int  # ms since stream start at which this frame's audio begins
    chunk: int
    sequence: int
    payload: bytes

    @property
    def end_ms(self) -> int:
        """ms since stream start at which this frame's audio ends."""
        return self.timestamp_ms + len(self.payload) // BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Scenario:
    """One call to simulate: μ-law audio per track and the ways the stream misbehaves.

    ``dropped`` maps a track to frame indices (on that track's timeline) that Twilio never sends;
    ``drop_rate`` drops further frames at random (``seed`` makes it repeatable). ``agent_delay``
    starts the outbound track that many seconds late (a ``<Dial>`` ringing). With ``pad`` the
    shorter track is continued with μ-law silence to the end of the call, as Twilio keeps sending
    both legs; without it that track just ends early. ``send_stop=False`` closes without ``stop``.
    """

    caller: bytes
    agent: bytes | None = None
    ids: CallIds = field(default_factory=CallIds.new)
    params: Mapping[str, str] = field(default_factory=dict)
    dropped: Mapping[Track, Collection[int]] = field(default_factory=dict)
    drop_rate: float = 0.0
    seed: int | None = None
    agent_delay: float = 0.0
    pad: bool = True
    send_stop: bool = True

    @property
    def tracks(self) -> tuple[Track, ...]:
        return (Track.INBOUND,) if self.agent is None else (Track.INBOUND, Track.OUTBOUND)


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Everything one simulated call sends, in order."""

    ids: CallIds
    tracks: tuple[Track, ...]
    connected: dict[str, Any]
    start: dict[str, Any]
    frames: list[MediaFrame]
    stop: dict[str, Any] | None
    duration_ms: int  # length of the stream's timeline, dropped frames included

    def media(self, frame: MediaFrame) -> dict[str, Any]:
        return media_message(self.ids.stream_sid, frame)

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message in send order."""
        yield self.connected
        yield self.start
        for frame in self.frames:
            yield self.media(frame)
        if self.stop is not None:
            yield self.stop


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    ids: CallIds, tracks: Collection[Track], params: Mapping[str, str], sequence: int = 1
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(sequence),
        "start": {
            "accountSid": ids.account_sid,
            "streamSid": ids.stream_sid,
            "callSid": ids.call_sid,
            "tracks": [str(t) for t in tracks],
            "customParameters": dict(params),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": ids.stream_sid,
    }


def media_message(stream_sid: str, frame: MediaFrame) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(frame.sequence),
        "media": {
            "track": str(frame.track),
            "chunk": str(frame.chunk),
            "timestamp": str(frame.timestamp_ms),
            "payload": base64.b64encode(frame.payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def stop_message(ids: CallIds, sequence: int) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(sequence),
        "stop": {"accountSid": ids.account_sid, "callSid": ids.call_sid},
        "streamSid": ids.stream_sid,
    }


def split_frames(ulaw: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """``ulaw`` cut into frames; the last one is padded with silence so every frame is 20 ms."""
    frames = [ulaw[i : i + frame_bytes] for i in range(0, len(ulaw), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] = frames[-1] + bytes([SILENCE]) * (frame_bytes - len(frames[-1]))
    return frames


def plan_call(scenario: Scenario) -> CallPlan:
    """Turn a scenario into the exact messages Twilio would send."""
    audio = {Track.INBOUND: split_frames(scenario.caller)}
    offset = {Track.INBOUND: 0}
    if scenario.agent is not None:
        audio[Track.OUTBOUND] = split_frames(scenario.agent)
        offset[Track.OUTBOUND] = max(0, round(scenario.agent_delay * 1000 / FRAME_MS))
    slots = max(offset[t] + len(audio[t]) for t in audio)
    silence = bytes([SILENCE]) * FRAME_BYTES
    rng = random.Random(scenario.seed)
    dropped = {t: frozenset(scenario.dropped.get(t, ())) for t in audio}

    frames: list[MediaFrame] = []
    chunk = dict.fromkeys(audio, 0)
    sequence = 1  # `start` is 1
    for slot in range(slots):
        for track in scenario.tracks:  # inbound before outbound within one 20 ms slot
            index = slot - offset[track]
            if index < 0 or (index >= len(audio[track]) and not scenario.pad):
                continue
            # Draw for every frame, dropped or not, so one seed gives the same losses whatever
            # explicit indices are added.
            lost = scenario.drop_rate > 0 and rng.random() < scenario.drop_rate
            if lost or index in dropped[track]:
                continue
            payload = audio[track][index] if index < len(audio[track]) else silence
            chunk[track] += 1
            sequence += 1
            frames.append(MediaFrame(track, index, slot * FRAME_MS, chunk[track], sequence, payload))

    ids = scenario.ids
    return CallPlan(
        ids=ids,
        tracks=scenario.tracks,
        connected=connected_message(),
        start=start_message(ids, scenario.tracks, scenario.params),
        frames=frames,
        stop=stop_message(ids, sequence + 1) if scenario.send_stop else None,
        duration_ms=slots * FRAME_MS,
    )


def twilio_signature(url: str, auth_token: str) -> str:
    """``X-Twilio-Signature`` for the WebSocket handshake: HMAC-SHA1 of the URL, no params."""
    return RequestValidator(auth_token).compute_signature(url, {})
