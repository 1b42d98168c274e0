"""Short-window Whisper decoding with CTranslate2, below faster-whisper's ``transcribe()``.

``transcribe()`` pads every decode to a 30 s encoder window (engines.md §3.1), which costs ~8× a
10 s window and adds ~0.5 s to every final. Calling the CTranslate2 model directly with a window
of max(audio + 1 s, ``min_window``) keeps decodes cheap; windows much shorter than 5–10 s make
tiny.en hallucinate on sub-second audio (engines.md §4), hence the floor.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

if "ctranslate2" in sys.modules and "OMP_NUM_THREADS" not in os.environ:
    logging.getLogger(__name__).warning(
        "ctranslate2 was imported before callscribe could set OMP_NUM_THREADS=1: expect spinning threads"
    )
# The ctranslate2 wheel bundles libgomp, which reads OMP_NUM_THREADS when it loads. Unset, an idle
# OpenMP thread spin-waits beside every 1-thread decode and burns ~26 % extra CPU (engines.md §3.2);
# parallelism comes from the decode pool instead. A value set by the user wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

_FRAMES_PER_SECOND = 100  # log-mel frames
_MAX_FRAMES = 3000  # Whisper's 30 s encoder input
_MAX_TOKENS = 448
_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A decoded word; times in seconds from the start of the decoded audio."""

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decode of one stretch of audio."""

    text: str
    words: tuple[WordTiming, ...]
    no_speech_prob: float
    avg_logprob: float
    tokens: int


class Decoder(Protocol):
    """What a session needs of a decoder. :class:`WhisperDecoder` is the real one; tests wrap it
    (e.g. to fail some decodes) and pass the wrapper as ``LocalEngine(settings, decoder=…)``."""

    language: str

    def decode(
        self, audio: np.ndarray, *, beam: int, min_window: float, word_timestamps: bool = False
    ) -> Decoded: ...


class WhisperDecoder:
    """A CTranslate2 Whisper model loaded once; :meth:`decode` is thread-safe (1 thread per decode)."""

    def __init__(
        self, model_dir: Path, *, compute_type: str = "int8", workers: int = 1, language: str = "en"
    ):
        # num_workers = CTranslate2 replicas: that many decodes run truly in parallel, each on 1 thread.
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=1, num_workers=workers
        )
        multilingual = self._model.model.is_multilingual
        self.language = language if multilingual else "en"
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe", language=self.language
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def decode(
        self, audio: np.ndarray, *, beam: int, min_window: float, word_timestamps: bool = False
    ) -> Decoded:
        """Transcribe float32 16 kHz ``audio`` (≤ 29 s) as one segment."""
        feats = self._model.feature_extractor(audio)[..., :-1]
        content = min(feats.shape[-1], _MAX_FRAMES - _FRAMES_PER_SECOND)
        window = min(_MAX_FRAMES, max(content + _FRAMES_PER_SECOND, int(min_window * _FRAMES_PER_SECOND)))
        x = np.zeros((1, feats.shape[0], window), dtype=np.float32)
        x[0, :, :content] = feats[:, :content]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=False)
        seconds = content / _FRAMES_PER_SECOND
        # Caps a repetition loop ("2, 1, 2, 1, …") at ~8 tokens per second of audio.
        max_length = min(_MAX_TOKENS, len(self._prompt) + int(8 * seconds) + 10)
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=beam,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        words: tuple[WordTiming, ...] = ()
        if word_timestamps and tokens:
            words = self._align(tokens, encoded, content, seconds)
        return Decoded(
            text=text,
            words=words,
            no_speech_prob=float(result.no_speech_prob),
            avg_logprob=float(result.scores[0]) if result.scores else 0.0,
            tokens=len(tokens),
        )

    def _align(
        self, tokens: list[int], encoded: ctranslate2.StorageView, frames: int, seconds: float
    ) -> tuple[WordTiming, ...]:
        alignment = self._model.find_alignment(self._tokenizer, [tokens], encoded, frames)[0]
        merge_punctuations(alignment, _PREPEND, _APPEND)
        out = []
        for w in alignment:
            if not w["word"].strip():
                continue
            start = min(max(float(w["start"]), 0.0), seconds)
            end = min(max(float(w["end"]), start), seconds)
            out.append(WordTiming(w["word"].strip(), start, end, float(w["probability"])))
        return tuple(out)
