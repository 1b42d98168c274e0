"""The events that flow from engines to sinks: the one currency between the parts of callscribe.

Every engine turns audio into :class:`TranscriptEvent`; the call bridge adds :class:`CallStarted`,
:class:`CallEnded` and :class:`CallError`; every sink consumes the :data:`Event` union and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Track(StrEnum):
    """A Twilio media track, named as ``media.track`` names it (no ``_track`` suffix)."""

    INBOUND = "inbound"  # the party Twilio receives audio from: the caller
    OUTBOUND = "outbound"  # what Twilio sends to that party: the dialled agent, <Say>, <Play>


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What is known about a call when its stream starts (Twilio's ``start`` message)."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    tracks: tuple[Track, ...] = (Track.INBOUND,)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    speakers: dict[Track, str] = field(
        default_factory=lambda: {Track.INBOUND: "caller", Track.OUTBOUND: "agent"}
    )

    def speaker(self, track: Track) -> str:
        return self.speakers.get(track, track.value)


@dataclass(frozen=True, slots=True)
class Word:
    """One word with its times in seconds on the call's audio clock."""

    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """A partial or final transcript of one utterance of one speaker.

    Partials and the final of one utterance share ``utterance_id``; a consumer replaces what it
    showed for that id. ``stable_text`` is the prefix of ``text`` the engine will not take back
    before the final (empty when the engine gives no such promise); the final may still revise it.
    ``start``/``end`` are seconds from the start of the stream, on the audio clock (gaps filled).
    ``received_at`` is the wall-clock time (``time.time()``) the engine produced the event.
    ``event_id`` is stamped when the event is published (:func:`with_event_id`).
    """

    call_sid: str
    stream_sid: str
    track: Track
    speaker: str
    utterance_id: str
    text: str
    is_final: bool
    start: float
    end: float
    words: tuple[Word, ...] = ()
    language: str | None = None
    confidence: float | None = None
    stable_text: str = ""
    received_at: float = field(default_factory=time.time)
    engine: str = ""

    event_id: str = ""
    type: str = field(default="transcript", init=False)


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A stream's ``start`` arrived and its engine session is being opened."""

    call: CallInfo
    engine: str
    at: float = field(default_factory=time.time)
    event_id: str = ""
    type: str = field(default="call.started", init=False)

    @property
    def call_sid(self) -> str:
        return self.call.call_sid


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The stream ended (``stop`` or socket closed) and the engine was drained."""

    call_sid: str
    stream_sid: str
    reason: str
    duration: float
    counters: dict[str, int] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    notes: dict[str, Any] | None = None  # end-of-call notes (callscribe.intelligence.notes), when built
    event_id: str = ""
    type: str = field(default="call.ended", init=False)


@dataclass(frozen=True, slots=True)
class CallError:
    """Something went wrong for one call (engine refused, network error…); the call goes on."""

    call_sid: str
    stream_sid: str
    code: str
    message: str
    retrying: bool = False
    at: float = field(default_factory=time.time)
    event_id: str = ""
    type: str = field(default="call.error", init=False)


@dataclass(frozen=True, slots=True)
class TriggerFired:
    """A phrase-trigger rule matched an utterance (agent assist); fires once per rule and utterance.

    ``matched`` is the (already redacted) text that matched; ``payload`` is the rule's own data
    (a knowledge-base link, a script…), passed through untouched.
    """

    call_sid: str
    stream_sid: str
    rule_id: str
    utterance_id: str
    track: Track
    speaker: str
    matched: str
    text: str
    is_final: bool
    severity: str = "info"
    payload: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    event_id: str = ""
    type: str = field(default="trigger.fired", init=False)


Event = TranscriptEvent | CallStarted | CallEnded | CallError | TriggerFired

_last_event_id = 0


def next_event_id() -> str:
    """A new event id: wall-clock nanoseconds, strictly increasing in this process, 20 digits.

    Ids sort in time order as strings, across calls and (within clock skew) across instances, so a
    feed client can say "everything after the last id I saw" and storage can answer.
    """
    global _last_event_id
    _last_event_id = max(_last_event_id + 1, time.time_ns())
    return f"{_last_event_id:020d}"


def with_event_id(event: Event) -> Event:
    """``event`` stamped with a new id, unless it already has one."""
    return event if event.event_id else replace(event, event_id=next_event_id())


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of ``event`` (the shape of ``/live`` and the JSON-lines sink)."""
    data = asdict(event)
    if isinstance(event, CallStarted):
        call = data.pop("call")
        call["tracks"] = [str(t) for t in event.call.tracks]
        call["speakers"] = {str(k): v for k, v in event.call.speakers.items()}
        data.update(call)
    if isinstance(event, TranscriptEvent | TriggerFired):
        data["track"] = str(event.track)
    return data
