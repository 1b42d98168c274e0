"""Latency of finals as the simulated caller sees it (pure: no I/O).

Latency of a final = wall time the simulator *received* it (so delivery over ``/live`` counts)
minus the wall time the simulator *sent* the frame carrying the audio at the final's ``end``.
``end`` is on the stream's audio clock, which is the ``media.timestamp`` clock, so the frame is
the first one sent on that track whose audio ends at or after ``end`` (a dropped frame maps to
the next one sent: that is when the gateway could first know the audio went on).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SentFrame:
    """When one ``media`` frame left the simulator."""

    track: str
    index: int
    timestamp_ms: int
    end_ms: int
    sent_at: float  # wall clock (time.time())


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One event read from ``/live``, as JSON data, with the simulator's receive time."""

    at: float  # wall clock (time.time())
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def is_transcript(self) -> bool:
        return self.type == "transcript"

    @property
    def is_final(self) -> bool:
        return self.is_transcript and bool(self.data.get("is_final"))


@dataclass(frozen=True, slots=True)
class FinalLatency:
    speaker: str
    track: str
    utterance_id: str
    end: float
    latency_ms: float
    text: str


@dataclass(frozen=True, slots=True)
class LatencyStats:
    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        if not values:
            return cls()
        return cls(len(values), _percentile(values, 50), _percentile(values, 95), max(values))


@dataclass(frozen=True, slots=True)
class LatencyReport:
    finals: tuple[FinalLatency, ...] = ()
    by_speaker: dict[str, LatencyStats] = field(default_factory=dict)
    overall: LatencyStats = field(default_factory=LatencyStats)
    first_partial_ms: float | None = None  # first media frame sent → first partial received
    first_final_ms: float | None = None  # first media frame sent → first final received
    unmatched: int = 0  # finals on a track the simulator sent nothing on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_report(sent: Sequence[SentFrame], events: Sequence[ReceivedEvent]) -> LatencyReport:
    """Compute the report from what was sent and what came back (events of one call)."""
    by_track: dict[str, list[SentFrame]] = {}
    for frame in sent:
        by_track.setdefault(frame.track, []).append(frame)
    ends = {}
    for track, frames in by_track.items():
        frames.sort(key=lambda f: f.end_ms)
        ends[track] = [f.end_ms for f in frames]

    finals: list[FinalLatency] = []
    unmatched = 0
    for ev in events:
        if not ev.is_final:
            continue
        d = ev.data
        track = str(d.get("track", ""))
        frames = by_track.get(track)
        if not frames:
            unmatched += 1
            continue
        end = float(d.get("end", 0.0))
        # Tolerance: float seconds → ms must not push an exact frame boundary onto the next frame.
        i = bisect.bisect_left(ends[track], end * 1000 - 1e-6)
        frame = frames[min(i, len(frames) - 1)]  # beyond the audio: the last frame sent
        finals.append(
            FinalLatency(
                speaker=str(d.get("speaker") or track),
                track=track,
                utterance_id=str(d.get("utterance_id", "")),
                end=end,
                latency_ms=(ev.at - frame.sent_at) * 1000,
                text=str(d.get("text", "")),
            )
        )

    speakers: dict[str, list[float]] = {}
    for f in finals:
        speakers.setdefault(f.speaker, []).append(f.latency_ms)

    first_sent = min((f.sent_at for f in sent), default=None)

    def first(pred: Any) -> float | None:
        at = next((ev.at for ev in events if ev.is_transcript and pred(ev)), None)
        return None if at is None or first_sent is None else (at - first_sent) * 1000

    return LatencyReport(
        finals=tuple(finals),
        by_speaker={s: LatencyStats.of(v) for s, v in sorted(speakers.items())},
        overall=LatencyStats.of([f.latency_ms for f in finals]),
        first_partial_ms=first(lambda ev: not ev.is_final),
        first_final_ms=first(lambda ev: ev.is_final),
        unmatched=unmatched,
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def format_report(report: LatencyReport) -> str:
    """The report as a few aligned text lines."""
    lines = ["latency of finals (received − audio sent), ms:"]
    rows = [*report.by_speaker.items(), ("overall", report.overall)]
    width = max(len(name) for name, _ in rows)
    for name, s in rows:
        lines.append(
            f"  {name:<{width}}  count {s.count:>4}  p50 {_ms(s.p50_ms):>6}  "
            f"p95 {_ms(s.p95_ms):>6}  max {_ms(s.max_ms):>6}"
        )
    lines.append(
        f"time to first partial: {_ms(report.first_partial_ms)} ms, "
        f"first final: {_ms(report.first_final_ms)} ms (from first frame sent)"
    )
    if report.unmatched:
        lines.append(f"{report.unmatched} final(s) on a track with no audio sent were not counted")
    return "\n".join(lines)
