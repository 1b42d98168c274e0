"""Per-track utterance segmentation over 20 ms frames: a pure state machine, no audio, no model.

Frames are numbered from the start of the track (frame ``i`` covers ``[i, i+1) × 20 ms``). The
caller pushes one VAD decision and one level per frame and gets back what happened:

- :class:`Started`: speech began; the utterance includes a pre-roll before the first speech frame.
- :class:`PartialDue`: enough new speech since the last partial to re-decode the utterance.
- :class:`Paused`: a short silence; a final decoded now can be sent at once if speech does not resume.
- :class:`Ended`: the endpoint silence elapsed, or the utterance hit its maximum length and was cut
  at the quietest moment of its last seconds (reason ``cut``; a new utterance continues from the cut).

While the running transcript ends in a number, the caller holds the endpoint longer
(:meth:`Segmenter.hold`) so "4532 [pause] 1234" stays one utterance; when a decode looks finished
the caller may close the utterance early (:meth:`Segmenter.close`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

FRAME_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Timings, in frames of 20 ms."""

    endpoint: int = 25  # silence that ends an utterance
    hold_endpoint: int = 50  # ... while the transcript ends in a number
    pause: int = 8  # silence after which a speculative final is worth decoding
    first_partial: int = 15  # speech before the first partial
    partial_interval: int = 25  # new speech between partials
    max_frames: int = 750  # longest utterance
    cut_search: int = 150  # where to look for the quietest cut point (last N frames)
    preroll: int = 15  # audio kept before the first speech frame
    tail: int = 10  # audio kept after the last speech frame (at most ``pause``)
    start_window: int = 5
    start_speech: int = 3

    @classmethod
    def from_seconds(
        cls,
        *,
        endpoint: float,
        partial_interval: float,
        max_utterance: float,
        hold_endpoint: float = 1.0,
        pause: float = 0.16,
        first_partial: float = 0.3,
    ) -> SegmenterConfig:
        def f(seconds: float) -> int:
            return max(1, round(seconds / FRAME_SECONDS))

        return cls(
            endpoint=f(endpoint),
            hold_endpoint=max(f(hold_endpoint), f(endpoint)),
            pause=min(f(pause), f(endpoint)),
            first_partial=f(first_partial),
            partial_interval=f(partial_interval),
            max_frames=f(max_utterance),
            cut_search=min(f(3.0), f(max_utterance) // 2),
        )


@dataclass(frozen=True, slots=True)
class Started:
    index: int  # utterance number on this track, from 0
    start: int  # first frame (pre-roll included)


@dataclass(frozen=True, slots=True)
class PartialDue:
    index: int


@dataclass(frozen=True, slots=True)
class Paused:
    index: int
    start: int
    end: int  # exclusive end frame the final would cover


@dataclass(frozen=True, slots=True)
class Ended:
    index: int
    start: int
    end: int  # exclusive
    voiced: int  # speech frames inside
    reason: str = "endpoint"  # or "pause" (closed early), "cut" (too long), "flush" (no more audio)


Action = Started | PartialDue | Paused | Ended


class Segmenter:
    """One track's utterance state."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self.frame = 0  # frames pushed so far
        self._recent: deque[bool] = deque(maxlen=config.start_window)
        self._floor = 0  # no utterance may start before this frame (end of the previous one)
        self._index = -1
        self._active = False
        self._start = 0
        self._last_speech = 0
        self._voiced = 0
        self._since_partial = 0
        self._shown = False
        self._hold = False
        self._levels: deque[float] = deque(maxlen=config.max_frames)

    @property
    def active(self) -> bool:
        return self._active

    @property
    def index(self) -> int:
        return self._index

    @property
    def start(self) -> int:
        return self._start

    @property
    def voiced(self) -> int:
        return self._voiced

    def speech_end(self) -> int:
        """Exclusive end frame of the current utterance if it ended now."""
        # A tail no longer than the pause makes a speculative final at the pause cover exactly the
        # audio the endpoint would, so it can be reused as is.
        return min(self.frame, self._last_speech + 1 + min(self.config.tail, self.config.pause))

    def partial_shown(self) -> None:
        """A partial of the current utterance was sent: from now on, partials every interval."""
        self._shown = True

    def hold(self, on: bool) -> None:
        """Use the longer endpoint (the transcript ends in a number) or go back to the normal one."""
        self._hold = on

    def push(self, speech: bool, level: float) -> list[Action]:
        """Advance by one frame; ``level`` (any loudness measure) picks the cut point of long utterances."""
        i = self.frame
        self.frame += 1
        self._recent.append(speech)
        self._levels.append(level)
        if not self._active:
            return self._maybe_start(i)
        return self._step_active(i, speech)

    def close(self, end: int) -> Ended | None:
        """End the current utterance at ``end`` now (its final was ready early); None if not active."""
        return self._finish(end, "pause") if self._active else None

    def flush(self) -> Ended | None:
        """End whatever is in progress (no more audio)."""
        return self._finish(self.speech_end(), "flush") if self._active else None

    def _maybe_start(self, i: int) -> list[Action]:
        c = self.config
        if sum(self._recent) < c.start_speech:
            return []
        first = i - len(self._recent) + 1 + list(self._recent).index(True)
        self._open(max(self._floor, first - c.preroll, 0), i)
        self._voiced = sum(self._recent)
        self._since_partial = self._voiced
        return [Started(self._index, self._start)]

    def _open(self, start: int, last_speech: int) -> None:
        self._index += 1
        self._active = True
        self._start = start
        self._last_speech = last_speech
        self._voiced = 0
        self._since_partial = 0
        self._shown = False
        self._hold = False

    def _step_active(self, i: int, speech: bool) -> list[Action]:
        c = self.config
        out: list[Action] = []
        if speech:
            self._last_speech = i
            self._voiced += 1
            self._since_partial += 1
            # Until a partial shows text, retry at the first-partial pace: a first decode of a
            # fraction of a second is often empty, and waiting a whole interval doubles the delay.
            due = c.partial_interval if self._shown else c.first_partial
            if self._since_partial >= due:
                self._since_partial = 0
                out.append(PartialDue(self._index))
        silence = i - self._last_speech
        if silence == c.pause:
            out.append(Paused(self._index, self._start, self.speech_end()))
        if silence >= (c.hold_endpoint if self._hold else c.endpoint):
            out.append(self._finish(self.speech_end(), "endpoint"))
        elif self.frame - self._start >= c.max_frames:
            out.extend(self._cut())
        return out

    def _cut(self) -> list[Action]:
        """Split a too-long utterance at the quietest 60 ms of its last seconds; speech goes on."""
        c = self.config
        levels = np.array(self._levels, dtype=np.float64)[-c.cut_search :]
        smooth = np.convolve(levels, np.ones(3) / 3, mode="same")
        cut = self.frame - len(levels) + int(np.argmin(smooth)) + 1
        ended = self._finish(cut, "cut")
        self._open(cut, self.frame - 1)
        return [ended, Started(self._index, cut)]

    def _finish(self, end: int, reason: str) -> Ended:
        self._active = False
        self._floor = end
        self._recent.clear()
        return Ended(self._index, self._start, end, self._voiced, reason)
