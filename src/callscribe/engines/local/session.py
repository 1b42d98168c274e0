"""One call on the embedded engine: per-track endpointing, partial and final decodes, events out.

Everything here runs on the event loop except the decode jobs, which run in the shared
:class:`~callscribe.engines.local.pool.DecodePool`. A track's audio buffer and segmenter are
guarded by a lock because a partial reads the newest audio from a worker thread when it starts.

Resilience (the call never drops because the engine did):

- **Engine not ready** (a call opened before the model is loaded and the pool started): audio is
  held per track, at most ``DecodeOptions.buffer_seconds`` (beyond that the *oldest* is dropped,
  counted ``buffer_full``, and stands in as silence so times stay on the call's clock), then
  replayed through the normal path as soon as the engine is ready.
- **A final decode fails** (the decoder raised, or the worker thread running it died): that
  utterance's audio is kept and decoded again after a backoff — a restart of the call's stream,
  counted in ``restarts`` and announced as ``CallError(code="local.restart", retrying=True)`` —
  up to ``max_decode_attempts`` times and while the audio kept for re-decodes stays within the
  buffer; then it is dropped (``engine_failed``/``buffer_full``) with ``local.decode_failed``.
  Finals of a track still go out in order. A failed partial is only counted: the next one reads
  the newest audio anyway.

Audio accounting (the standard counters of :mod:`callscribe.engines.base`): a fed byte is
*delivered* once consumed — part of an utterance whose final was decoded (or judged non-speech),
or silence no utterance can take any more; *dropped* as ``closed``, ``buffer_full``,
``engine_failed``, ``drain_timeout``, ``aborted`` or ``partial_frame``; otherwise *pending*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from callscribe.audio.mulaw import ULAW_TO_PCM
from callscribe.audio.resample import resample
from callscribe.engines.base import RESTARTS, AudioLedger, EngineSession
from callscribe.engines.local import metrics
from callscribe.engines.local.decoder import Decoded, Decoder
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
    buffer_seconds: float = 120.0  # per track: audio held while the engine is not ready or re-decoding
    max_decode_attempts: int = 5  # decodes of one final before its audio is given up
    retry_initial: float = 0.1  # backoff between attempts: initial · 2^(n-1), capped (s)
    retry_max: float = 2.0

    def retry_delay(self, attempt: int) -> float:
        return min(self.retry_max, self.retry_initial * 2 ** max(0, attempt - 1))


class Backend(Protocol):
    """Where a session gets its decoder and pool (the :class:`~.engine.LocalEngine`)."""

    def resources(self) -> tuple[Decoder, DecodePool] | None:
        """The decoder and pool, or None while the engine is not ready."""

    async def wait_ready(self) -> None:
        """Until :meth:`resources` has them."""


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
        # accounting, in μ-law bytes of this track (1 per sample): frames [0, settled) are settled,
        # utterances in ``unsettled`` wait for their final; bytes [0, skip) were dropped before the
        # engine was ready and processed as silence; ``held`` waits for the engine to be ready.
        self.settled = 0
        self.unsettled: deque[Ended] = deque()
        self.skip = 0
        self.held = bytearray()
        self.processed = 0

    def real(self, start_frame: int, end_frame: int) -> int:
        """Fed bytes (not stand-in silence) in frames [start, end)."""
        return max(0, end_frame * FRAME_SAMPLES - max(start_frame * FRAME_SAMPLES, self.skip))

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
        backend: Backend,
        options: DecodeOptions,
        on_close: Callable[[], None] | None,
    ) -> None:
        super().__init__(call)
        self._backend = backend
        self._decoder: Decoder | None = None
        self._pool: DecodePool | None = None
        self._options = options
        self._on_close = on_close
        self._tracks: dict[Track, _TrackState] = {}
        self._finals: set[asyncio.Task[None]] = set()
        self._closed = False
        self._live = False  # decoder and pool in hand, nothing held: audio goes straight through
        self._replay: asyncio.Task[None] | None = None
        self._retry_bytes = 0  # audio of finals waiting to be decoded again
        self._full_reported = False
        self._ledger = AudioLedger()
        self._counts = {
            "frames": 0,
            "partials": 0,
            "finals": 0,
            "non_speech": 0,  # finals judged non-speech and not shown (their audio is delivered)
            "errors": 0,
            RESTARTS: 0,
            "partial_failures": 0,
            "replayed_bytes": 0,
        }
        if (res := backend.resources()) is not None:
            self._decoder, self._pool = res
            self._live = True

    @property
    def counters(self) -> dict[str, int]:
        return self._counts | self._ledger.counters()

    async def start(self) -> None:
        log.info("local session started call=%s tracks=%s", self.call.call_sid, ",".join(self.call.tracks))
        self._ensure_replay()

    def feed(self, track: Track, audio: bytes) -> None:
        if not audio:
            return
        self._ledger.add_fed(len(audio))
        if self._closed:
            self._ledger.drop("closed", len(audio))
            return
        st = self._track(track)
        if not self._live:
            self._hold(st, audio)
            return
        self._process(st, audio)

    def _track(self, track: Track) -> _TrackState:
        st = self._tracks.get(track)
        if st is None:
            st = self._tracks[track] = _TrackState(track, self._options.segmenter)
        return st

    # --- engine not ready: hold, then replay

    def _hold(self, st: _TrackState, audio: bytes) -> None:
        st.held += audio
        self._ensure_replay()
        cap = int(self._options.buffer_seconds * 8000)
        excess = len(st.held) - cap
        if excess > 0 and st.processed == 0:  # only ever the head of the track: it becomes silence
            del st.held[:excess]
            st.skip += excess
            self._ledger.drop("buffer_full", excess)
            if not self._full_reported:
                self._full_reported = True
                self._error(
                    "local.buffer_full",
                    f"the engine is not ready after {self._options.buffer_seconds:g} s of audio; "
                    "dropping the oldest until it is",
                    retrying=True,
                )

    def _ensure_replay(self) -> None:
        if self._live or self._replay is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # start() will do it
        self._replay = loop.create_task(self._become_live(), name=f"local-replay-{self.call.call_sid}")

    async def _become_live(self) -> None:
        """Wait for the engine, then run the held audio through (in slices: the loop stays free)."""
        res = self._backend.resources()
        if res is None:
            log.warning("call=%s: local engine not ready; holding audio", self.call.call_sid)
            await self._backend.wait_ready()
            res = self._backend.resources()
            assert res is not None
        self._decoder, self._pool = res
        slice_bytes = 8000  # 1 s of audio per track per step
        while True:
            for st in self._tracks.values():
                if st.processed < st.skip:
                    n = min(slice_bytes, st.skip - st.processed)
                    self._process(st, bytes([0xFF]) * n)  # μ-law silence stands in for dropped audio
                elif st.held:
                    chunk = bytes(st.held[:slice_bytes])
                    del st.held[:slice_bytes]
                    self._counts["replayed_bytes"] += len(chunk)
                    self._process(st, chunk)
            if not any(st.held or st.processed < st.skip for st in self._tracks.values()):
                self._live = True  # no await since the last check: nothing can slip in between
                if self._counts["replayed_bytes"]:
                    log.info(
                        "call=%s: local engine ready; %d held bytes replayed",
                        self.call.call_sid,
                        self._counts["replayed_bytes"],
                    )
                return
            await asyncio.sleep(0)

    # --- audio in

    def _process(self, st: _TrackState, audio: bytes) -> None:
        st.processed += len(audio)
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
        self._settle_silence(st)

    async def finish(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = any(st.held or st.processed < st.skip for st in self._tracks.values())
        if not self._live and waiting and not await self._await_replay(deadline - loop.time()):
            held = sum(len(st.held) for st in self._tracks.values())
            self._error(
                "local.unavailable",
                f"the local engine was not ready by the end of the call; {held} bytes not transcribed",
            )
            self._drop_held("engine_failed")
        for st in self._tracks.values():
            with st.lock:
                ended = st.seg.flush()
            if ended is not None:
                self._finalize(st, ended)
        self._drop_partials()
        pending = set(self._finals)
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                self._error("local.finish_timeout", f"{len(late)} final(s) not ready within {timeout:.1f} s")
        for st in self._tracks.values():
            self._close_books(st, "drain_timeout")
        self._release()
        self._close_events()

    async def aclose(self) -> None:
        self._closed = True
        if self._replay is not None and not self._replay.done():
            self._replay.cancel()
            await asyncio.gather(self._replay, return_exceptions=True)
        self._drop_held("aborted")
        self._drop_partials()
        tasks = list(self._finals)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for st in self._tracks.values():
            self._close_books(st, "aborted")
        self._release()
        self._close_events()

    async def _await_replay(self, timeout: float) -> bool:
        """True once held audio is replayed (the engine became ready) within ``timeout``."""
        self._ensure_replay()
        if self._replay is None:
            return self._live
        try:
            await asyncio.wait_for(asyncio.shield(self._replay), max(0.0, timeout))
        except TimeoutError:
            self._replay.cancel()
            await asyncio.gather(self._replay, return_exceptions=True)
        return self._live

    def _drop_partials(self) -> None:
        if self._pool is not None:
            self._pool.drop_partials({(id(self), t) for t in self._tracks})

    # --- accounting

    def _settle(self, st: _TrackState, ended: Ended, dropped: str | None) -> None:
        """``ended``'s final is out (or given up): it and the silence before it are settled."""
        try:
            st.unsettled.remove(ended)
        except ValueError:
            return  # settled already (finish/aclose closed the books)
        self._ledger.deliver(st.real(st.settled, ended.start))
        n = st.real(ended.start, ended.end)
        if dropped is None:
            self._ledger.deliver(n)
        else:
            self._ledger.drop(dropped, n)
        st.settled = max(st.settled, ended.end)

    def _settle_silence(self, st: _TrackState) -> None:
        """Silence no future utterance can reach (pre-roll included) is consumed."""
        if st.unsettled or st.seg.active:
            return
        c = st.seg.config
        safe = st.seg.frame - c.preroll - c.start_window
        if safe > st.settled:
            self._ledger.deliver(st.real(st.settled, safe))
            st.settled = safe

    def _close_books(self, st: _TrackState, reason: str) -> None:
        """End of the session: whatever of ``st`` is not settled is dropped as ``reason``."""
        while st.unsettled:
            ended = st.unsettled.popleft()
            self._ledger.deliver(st.real(st.settled, ended.start))
            self._ledger.drop(reason, st.real(ended.start, ended.end))
            st.settled = max(st.settled, ended.end)
        if st.seg.active:
            self._ledger.deliver(st.real(st.settled, st.seg.start))
            self._ledger.drop(reason, st.real(st.seg.start, st.seg.frame))
        else:
            self._ledger.deliver(st.real(st.settled, st.seg.frame))
        st.settled = st.seg.frame
        self._ledger.drop("partial_frame" if reason == "drain_timeout" else reason, len(st.leftover))
        st.leftover = b""

    def _drop_held(self, reason: str) -> None:
        for st in self._tracks.values():
            self._ledger.drop(reason, len(st.held))
            st.held.clear()

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
        assert self._pool is not None
        try:
            future = self._pool.submit_partial((id(self), st.track), lambda: self._decode_partial(st))
        except RuntimeError as exc:  # the pool is closed: a partial is only a preview
            log.debug("partial not submitted call=%s: %r", self.call.call_sid, exc)
            return
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
            self._counts["partial_failures"] += 1  # the final will be decoded (and retried) anyway
            log.warning("partial decode failed call=%s track=%s: %r", self.call.call_sid, st.track, exc)
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
        with st.lock:
            pcm = st.samples(paused.start, paused.end)
        future = self._submit_final(pcm)
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
        # the audio is kept with the job: a failed decode is run again on it (a stream restart)
        with st.lock:
            pcm = st.samples(ended.start, ended.end)
        spec = st.speculation
        if spec is not None and spec.index == ended.index and spec.end == ended.end:
            future = spec.future
        else:
            future = self._submit_final(pcm)
        st.speculation = None
        st.unsettled.append(ended)
        task = asyncio.get_running_loop().create_task(
            self._emit_final(st, ended, future, pcm, st.last_final, time.perf_counter())
        )
        st.last_final = task
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    def _submit_final(self, pcm: np.ndarray) -> asyncio.Future[Decoded]:
        assert self._pool is not None
        beam = self._options.final_beam
        try:
            return self._pool.submit_final(lambda: self._decode_final(pcm, beam))
        except RuntimeError as exc:  # the pool is closed: a failed decode like any other
            future: asyncio.Future[Decoded] = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
            return future

    async def _decoded_final(
        self, st: _TrackState, ended: Ended, future: asyncio.Future[Decoded], pcm: np.ndarray
    ) -> Decoded | None:
        """The final's decode, run again after a failure; None once given up (then settled as dropped)."""
        name = f"{st.track.value}-{ended.index}"
        attempt = 1
        while True:
            try:
                return await future
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "final decode %s failed call=%s (attempt %d): %r", name, self.call.call_sid, attempt, exc
                )
                failure = exc
            kept = len(pcm)  # int16 samples = μ-law bytes of the call
            cap = int(self._options.buffer_seconds * 8000) * max(1, len(self._tracks))
            if attempt >= self._options.max_decode_attempts or self._retry_bytes + kept > cap:
                full = attempt < self._options.max_decode_attempts
                self._error(
                    "local.decode_failed",
                    f"final decode of {name} failed {attempt} time(s), giving up on its "
                    f"{kept / 8000:.1f} s of audio: {failure!r}",
                )
                self._settle(st, ended, "buffer_full" if full else "engine_failed")
                return None
            delay = self._options.retry_delay(attempt)
            self._counts[RESTARTS] += 1
            self._error(
                "local.restart",
                f"final decode of {name} failed ({failure!r}); decoding its {kept / 8000:.1f} s of audio "
                f"again in {delay:.2f} s",
                retrying=True,
            )
            self._retry_bytes += kept
            try:
                await asyncio.sleep(delay)
            finally:
                self._retry_bytes -= kept
            attempt += 1
            future = self._submit_final(pcm)

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
        pcm: np.ndarray,
        previous: asyncio.Task[None] | None,
        ended_at: float,
    ) -> None:
        if previous is not None:  # finals of one track go out in order
            await asyncio.wait([previous])
        decoded = await self._decoded_final(st, ended, future, pcm)
        if decoded is None:
            return
        self._settle(st, ended, None)
        if _rejected(decoded, ended.voiced):
            self._counts["non_speech"] += 1
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
        assert self._decoder is not None
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
                language=self._decoder.language if self._decoder is not None else None,
                confidence=confidence,
                stable_text=stable,
                engine="local",
            )
        )

    def _error(self, code: str, message: str, retrying: bool = False) -> None:
        self._counts["errors"] += 1
        log.warning("%s call=%s: %s", code, self.call.call_sid, message)
        self._emit(CallError(self.call.call_sid, self.call.stream_sid, code, message, retrying=retrying))

    def _release(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
