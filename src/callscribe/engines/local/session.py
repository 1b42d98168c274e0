"""One call on the embedded engine: per-track endpointing, partial and final decodes, events out.

Everything here runs on the event loop except the decode jobs, which run in the shared
:class:`~callscribe.engines.local.pool.DecodePool`. A track's audio buffer and segmenter are
guarded by a lock because a partial reads the newest audio from a worker thread when it starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from callscribe.audio.mulaw import ULAW_TO_PCM
from callscribe.audio.resample import resample
from callscribe.engines.base import EngineSession
from callscribe.engines.local import metrics
from callscribe.engines.local.decoder import Decoded, WhisperDecoder
from callscribe.engines.local.pool import DecodePool
from callscribe.engines.local.stability import LocalAgreement
from callscribe.engines.local.textrules import (
    ends_with_number,
    is_hallucination,
    looks_complete,
    trim_repetition,
)
from callscribe.engines.local.utterances import (
    FRAME_SECONDS,
    Ended,
    PartialDue,
    Paused,
    Segmenter,
    SegmenterConfig,
    Started,
)
from callscribe.engines.local.vad import FRAME_SAMPLES, FrameVad
from callscribe.events import CallError, CallInfo, Track, TranscriptEvent, Word

log = logging.getLogger(__name__)

PARTIAL_MIN_WINDOW = 5.0  # s; engines.md §5.2: ≥ 5 s keeps partials sane at half the cost of 10 s
FINAL_MIN_WINDOW = 10.0  # s; engines.md §4: as accurate as the 30 s default
EARLY_CLOSE_MIN_VOICED = 50  # frames (1 s) of speech before a sentence-like pause may end an utterance


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """What the session needs to know about decoding."""

    final_beam: int
    segmenter: SegmenterConfig


@dataclass(slots=True)
class _Speculation:
    """A final decoded at a short pause, reused if the pause becomes the endpoint."""

    index: int
    end: int
    future: asyncio.Future[Decoded]


def _rejected(decoded: Decoded, voiced_frames: int) -> bool:
    return is_hallucination(
        decoded.text, decoded.no_speech_prob, decoded.avg_logprob, voiced_frames * FRAME_SECONDS
    )


class _TrackState:
    def __init__(self, track: Track, config: SegmenterConfig) -> None:
        self.track = track
        self.seg = Segmenter(config)
        self.vad = FrameVad()
        self.lock = threading.Lock()
        self.pcm = bytearray()  # int16 samples of this track from sample ``base`` on
        self.base = 0
        self.leftover = b""  # μ-law bytes short of a whole frame
        self.agreement = LocalAgreement()
        self.partial_end = 0  # end frame of the newest partial shown
        self.speculation: _Speculation | None = None
        self.last_final: asyncio.Task[None] | None = None

    def samples(self, start_frame: int, end_frame: int) -> np.ndarray:
        """int16 audio of frames [start, end) (call with the lock held)."""
        a = max(start_frame * FRAME_SAMPLES - self.base, 0)
        b = max(end_frame * FRAME_SAMPLES - self.base, a)
        return np.frombuffer(bytes(self.pcm[2 * a : 2 * b]), dtype=np.int16)

    def trim(self) -> None:
        """Forget audio no utterance can still need (call with the lock held)."""
        c = self.seg.config
        keep_from = self.seg.start if self.seg.active else self.seg.frame - c.preroll - c.start_window
        drop = keep_from * FRAME_SAMPLES - self.base
        if drop >= 8000:  # in ≥ 1 s steps: a memmove per frame would be wasteful
            del self.pcm[: 2 * drop]
            self.base += drop


class LocalSession(EngineSession):
    """A call transcribed by the shared local decoder; see :class:`~callscribe.engines.base.EngineSession`."""

    def __init__(
        self,
        call: CallInfo,
        decoder: WhisperDecoder,
        pool: DecodePool,
        options: DecodeOptions,
        on_close: Callable[[], None] | None,
    ) -> None:
        super().__init__(call)
        self._decoder = decoder
        self._pool = pool
        self._options = options
        self._on_close = on_close
        self._tracks: dict[Track, _TrackState] = {}
        self._finals: set[asyncio.Task[None]] = set()
        self._closed = False
        self._counts = {"frames": 0, "partials": 0, "finals": 0, "dropped": 0, "errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    async def start(self) -> None:
        log.info("local session started call=%s tracks=%s", self.call.call_sid, ",".join(self.call.tracks))

    def feed(self, track: Track, audio: bytes) -> None:
        if self._closed or not audio:
            return
        st = self._tracks.get(track)
        if st is None:
            st = self._tracks[track] = _TrackState(track, self._options.segmenter)
        data = st.leftover + audio
        whole = len(data) - len(data) % FRAME_SAMPLES
        st.leftover = data[whole:]
        if not whole:
            return
        pcm = ULAW_TO_PCM[np.frombuffer(data[:whole], dtype=np.uint8)]
        actions = []
        with st.lock:
            st.trim()  # before pushing: the actions of the previous feed have taken their audio
            st.pcm += pcm.tobytes()
            for frame in pcm.reshape(-1, FRAME_SAMPLES):
                speech, level = st.vad(frame)
                actions.extend(st.seg.push(speech, level))
        self._counts["frames"] += whole // FRAME_SAMPLES
        for action in actions:
            self._handle(st, action)

    async def finish(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        for st in self._tracks.values():
            with st.lock:
                ended = st.seg.flush()
            if ended is not None:
                self._finalize(st, ended)
        self._pool.drop_partials({(id(self), t) for t in self._tracks})
        pending = set(self._finals)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                self._error("local.finish_timeout", f"{len(late)} final(s) not ready within {timeout:.1f} s")
        self._release()
        self._close_events()

    async def aclose(self) -> None:
        self._closed = True
        self._pool.drop_partials({(id(self), t) for t in self._tracks})
        for task in list(self._finals):
            task.cancel()
        self._release()
        self._close_events()

    # --- segmenter actions

    def _handle(self, st: _TrackState, action: Started | PartialDue | Paused | Ended) -> None:
        if isinstance(action, Started):
            st.agreement = LocalAgreement()
            st.partial_end = 0
            st.speculation = None
        elif isinstance(action, PartialDue):
            self._request_partial(st)
        elif isinstance(action, Paused):
            self._speculate(st, action)
        else:
            self._finalize(st, action)

    def _request_partial(self, st: _TrackState) -> None:
        future = self._pool.submit_partial((id(self), st.track), lambda: self._decode_partial(st))
        if future is not None:
            future.add_done_callback(lambda f: self._on_partial(st, f))

    def _decode_partial(self, st: _TrackState) -> tuple[int, int, Decoded] | None:
        """Worker thread: decode the newest audio of the utterance in progress (greedy); None if none."""
        with st.lock:
            if not st.seg.active:
                return None
            index, end = st.seg.index, st.seg.frame
            pcm = st.samples(st.seg.start, end)
        decoded = self._decode(pcm, "partial", beam=1, min_window=PARTIAL_MIN_WINDOW, words=False)
        # Greedy decodes of digit strings loop ("4 0 9 7 9 7 9 7 …"); beam-5 finals rarely do.
        return index, end, dataclasses.replace(decoded, text=trim_repetition(decoded.text))

    def _on_partial(self, st: _TrackState, future: asyncio.Future[tuple[int, int, Decoded] | None]) -> None:
        if future.cancelled() or self._closed:
            return
        if (exc := future.exception()) is not None:
            self._error("local.decode_failed", f"partial decode failed: {exc!r}")
            return
        result = future.result()
        if result is None:
            return
        index, end, decoded = result
        if not st.seg.active or st.seg.index != index or end <= st.partial_end:
            return  # the utterance ended meanwhile (its final supersedes this) or a newer partial is out
        st.partial_end = end
        if _rejected(decoded, st.seg.voiced):
            return
        st.seg.hold(ends_with_number(decoded.text))
        st.seg.partial_shown()
        stable, text = st.agreement.update(decoded.text)
        self._counts["partials"] += 1
        self._emit_transcript(st, index, text, st.seg.start, end, is_final=False, stable=stable)

    def _speculate(self, st: _TrackState, paused: Paused) -> None:
        future = self._submit_final(st, paused.start, paused.end)
        st.speculation = _Speculation(paused.index, paused.end, future)
        future.add_done_callback(lambda f: self._on_speculation(st, paused))

    def _on_speculation(self, st: _TrackState, paused: Paused) -> None:
        spec = st.speculation
        if spec is None or spec.index != paused.index or spec.end != paused.end or self._closed:
            return
        if spec.future.cancelled() or spec.future.exception() is not None:
            return  # the endpoint will decode again (and report a failure then)
        if not st.seg.active or st.seg.index != spec.index or st.seg.speech_end() != spec.end:
            return  # the endpoint already took it, or speech resumed
        decoded = spec.future.result()
        st.seg.hold(ends_with_number(decoded.text))
        # Short fragments are not closed early: cut off at a pause, Whisper ends almost anything with
        # a period, and a lone "five" becomes "Bye." before the rest of a card number arrives.
        if st.seg.voiced >= EARLY_CLOSE_MIN_VOICED and looks_complete(decoded.text):
            with st.lock:
                ended = st.seg.close(spec.end)
            if ended is not None:
                self._finalize(st, ended)

    def _finalize(self, st: _TrackState, ended: Ended) -> None:
        spec = st.speculation
        if spec is not None and spec.index == ended.index and spec.end == ended.end:
            future = spec.future
        else:
            future = self._submit_final(st, ended.start, ended.end)
        st.speculation = None
        task = asyncio.get_running_loop().create_task(
            self._emit_final(st, ended, future, st.last_final, time.perf_counter())
        )
        st.last_final = task
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    def _submit_final(self, st: _TrackState, start: int, end: int) -> asyncio.Future[Decoded]:
        with st.lock:
            pcm = st.samples(start, end)
        beam = self._options.final_beam
        return self._pool.submit_final(lambda: self._decode_final(pcm, beam))

    def _decode_final(self, pcm: np.ndarray, beam: int) -> Decoded:
        """Worker thread: beam search with word times; a loop the length cap let through is cut."""
        decoded = self._decode(pcm, "final", beam=beam, min_window=FINAL_MIN_WINDOW, words=True)
        text = trim_repetition(decoded.text)
        if text == decoded.text:
            return decoded
        return dataclasses.replace(decoded, text=text, words=decoded.words[: len(text.split())])

    async def _emit_final(
        self,
        st: _TrackState,
        ended: Ended,
        future: asyncio.Future[Decoded],
        previous: asyncio.Task[None] | None,
        ended_at: float,
    ) -> None:
        if previous is not None:  # finals of one track go out in order
            await asyncio.wait([previous])
        try:
            decoded = await future
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("final decode failed call=%s track=%s: %r", self.call.call_sid, st.track, exc)
            self._error("local.decode_failed", f"final decode of {st.track}-{ended.index} failed: {exc!r}")
            return
        if _rejected(decoded, ended.voiced):
            self._counts["dropped"] += 1
            log.debug("dropped non-speech %r call=%s track=%s", decoded.text, self.call.call_sid, st.track)
            return
        start = ended.start * FRAME_SECONDS
        end = ended.end * FRAME_SECONDS
        words = tuple(
            Word(
                w.word, round(min(start + w.start, end), 3), round(min(start + w.end, end), 3), w.probability
            )
            for w in decoded.words
        )
        self._counts["finals"] += 1
        log.debug(
            "final call=%s %s-%d (%s, %.2f s of audio) out %.0f ms after its end was decided",
            self.call.call_sid,
            st.track,
            ended.index,
            ended.reason,
            end - start,
            (time.perf_counter() - ended_at) * 1000,
        )
        self._emit_transcript(
            st,
            ended.index,
            decoded.text,
            ended.start,
            ended.end,
            is_final=True,
            stable=decoded.text,
            words=words,
            confidence=math.exp(decoded.avg_logprob),
        )

    # --- helpers

    def _decode(self, pcm: np.ndarray, kind: str, *, beam: int, min_window: float, words: bool) -> Decoded:
        """Worker thread: 8 kHz int16 → 16 kHz float → Whisper, with metrics."""
        audio = resample(pcm.astype(np.float32) / 32768.0, 8000, 16000)
        t0 = time.perf_counter()
        try:
            decoded = self._decoder.decode(audio, beam=beam, min_window=min_window, word_timestamps=words)
        except Exception:
            metrics.DECODE_ERRORS.labels(kind).inc()
            raise
        took = time.perf_counter() - t0
        metrics.DECODE_SECONDS.labels(kind).observe(took)
        metrics.REAL_TIME_FACTOR.labels(kind).observe(took / max(len(pcm) / 8000, FRAME_SECONDS))
        return decoded

    def _emit_transcript(
        self,
        st: _TrackState,
        index: int,
        text: str,
        start: int,
        end: int,
        *,
        is_final: bool,
        stable: str,
        words: tuple[Word, ...] = (),
        confidence: float | None = None,
    ) -> None:
        self._emit(
            TranscriptEvent(
                call_sid=self.call.call_sid,
                stream_sid=self.call.stream_sid,
                track=st.track,
                speaker=self.call.speaker(st.track),
                utterance_id=f"{st.track.value}-{index}",
                text=text,
                is_final=is_final,
                start=round(start * FRAME_SECONDS, 3),
                end=round(end * FRAME_SECONDS, 3),
                words=words,
                language=self._decoder.language,
                confidence=confidence,
                stable_text=stable,
                engine="local",
            )
        )

    def _error(self, code: str, message: str) -> None:
        self._counts["errors"] += 1
        log.warning("%s call=%s: %s", code, self.call.call_sid, message)
        self._emit(CallError(self.call.call_sid, self.call.stream_sid, code, message))

    def _release(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
