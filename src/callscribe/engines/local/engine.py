"""The embedded engine ``local``: Whisper in-process, no API key, no network.

The server builds it from :class:`~callscribe.config.Settings` and starts it once::

    engine = LocalEngine(settings)
    await engine.startup()          # resolves and loads the model off the event loop, starts the pool
    session = engine.open(call)     # EngineBusy beyond LOCAL_MAX_CALLS
    ...
    await engine.shutdown()
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from callscribe.config import Settings
from callscribe.engines.base import Engine, EngineBusy
from callscribe.engines.local import metrics
from callscribe.engines.local.decoder import WhisperDecoder
from callscribe.engines.local.models import resolve_model
from callscribe.engines.local.pool import DecodePool
from callscribe.engines.local.session import DecodeOptions, LocalSession
from callscribe.engines.local.utterances import SegmenterConfig
from callscribe.events import CallInfo

log = logging.getLogger(__name__)


class LocalEngine(Engine):
    """One Whisper model and one decode pool shared by every call of the process."""

    name = "local"

    def __init__(self, settings: Settings, *, decoder: WhisperDecoder | None = None) -> None:
        """``decoder``: an already loaded model to share (tests load it once for many engines)."""
        self.settings = settings
        self.workers = settings.local_workers or os.cpu_count() or 1
        self.max_calls = settings.local_max_calls
        self._decoder = decoder
        self._pool: DecodePool | None = None
        self._active = 0
        self._options = DecodeOptions(
            final_beam=settings.local_final_beam,
            segmenter=SegmenterConfig.from_seconds(
                endpoint=settings.local_endpoint_silence,
                partial_interval=settings.local_partial_interval,
                max_utterance=settings.local_max_utterance,
            ),
        )

    async def startup(self) -> None:
        if self._decoder is None:
            self._decoder = await asyncio.to_thread(self._load)
        self._pool = DecodePool(self.workers)
        self._pool.start()
        log.info("local engine ready: %s", self.describe())

    def _load(self) -> WhisperDecoder:
        s = self.settings
        model_dir: Path = resolve_model(s.local_model)
        log.info("loading %s (%s) from %s", s.local_model, s.local_compute_type, model_dir)
        return WhisperDecoder(
            model_dir, compute_type=s.local_compute_type, workers=self.workers, language=s.local_language
        )

    async def shutdown(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    def open(self, call: CallInfo) -> LocalSession:
        if self._decoder is None or self._pool is None:
            raise RuntimeError("LocalEngine.startup() has not run")
        if self._active >= self.max_calls:
            raise EngineBusy(f"local engine at capacity ({self.max_calls} calls)")
        self._active += 1
        metrics.ACTIVE_SESSIONS.set(self._active)
        log.info("call=%s admitted (%d/%d)", call.call_sid, self._active, self.max_calls)
        return LocalSession(call, self._decoder, self._pool, self._options, self._release)

    def _release(self) -> None:
        self._active -= 1
        metrics.ACTIVE_SESSIONS.set(self._active)

    @property
    def active_calls(self) -> int:
        return self._active

    def describe(self) -> dict[str, object]:
        return {
            "engine": self.name,
            "model": self.settings.local_model,
            "language": self._decoder.language if self._decoder else self.settings.local_language,
            "compute_type": self.settings.local_compute_type,
            "workers": self.workers,
            "max_calls": self.max_calls,
            "active_calls": self._active,
        }
