"""The embedded engine ``local``: Whisper in-process, no API key, no network.

The server builds it from :class:`~callscribe.config.Settings` and starts it once::

    engine = LocalEngine(settings)
    await engine.startup()          # resolves and loads the model off the event loop, starts the pool
    session = engine.open(call)     # EngineBusy beyond LOCAL_MAX_CALLS
    ...
    await engine.shutdown()

``open()`` works before ``startup()`` has finished (or after ``shutdown()``): the session holds its
audio (``ENGINE_BUFFER_SECONDS`` per track) and replays it once the engine is ready, so a server may
accept calls while the model loads. Fault injection for tests: ``decoder=`` takes any
:class:`~callscribe.engines.local.decoder.Decoder`, e.g. a wrapper of the real one that raises.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from callscribe.config import Settings
from callscribe.engines.base import Engine, EngineBusy
from callscribe.engines.local import metrics
from callscribe.engines.local.decoder import Decoder, WhisperDecoder
from callscribe.engines.local.models import resolve_model
from callscribe.engines.local.pool import DecodePool
from callscribe.engines.local.session import DecodeOptions, LocalSession
from callscribe.engines.local.utterances import SegmenterConfig
from callscribe.events import CallInfo

log = logging.getLogger(__name__)


class LocalEngine(Engine):
    """One Whisper model and one decode pool shared by every call of the process."""

    name = "local"

    def __init__(
        self,
        settings: Settings,
        *,
        decoder: Decoder | None = None,
        buffer_seconds: float | None = None,
        max_decode_attempts: int = 5,
        retry_backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        """``decoder``: an already loaded model to share (tests load it once for many engines), or
        any :class:`Decoder` (fault injection). ``buffer_seconds`` (default
        ``settings.engine_buffer_seconds``): audio per track a call holds while the engine is not
        ready or re-decoding. A final whose decode fails is decoded again after
        ``retry_backoff`` = (initial, maximum) seconds, doubling, up to ``max_decode_attempts``."""
        self.settings = settings
        self.workers = settings.local_workers or os.cpu_count() or 1
        self.max_calls = settings.local_max_calls
        self._decoder = decoder
        self._pool: DecodePool | None = None
        self._ready = asyncio.Event()
        self._active = 0
        self._options = DecodeOptions(
            final_beam=settings.local_final_beam,
            segmenter=SegmenterConfig.from_seconds(
                endpoint=settings.local_endpoint_silence,
                partial_interval=settings.local_partial_interval,
                max_utterance=settings.local_max_utterance,
            ),
            buffer_seconds=settings.engine_buffer_seconds if buffer_seconds is None else buffer_seconds,
            max_decode_attempts=max_decode_attempts,
            retry_initial=retry_backoff[0],
            retry_max=retry_backoff[1],
        )

    async def startup(self) -> None:
        if self._decoder is None:
            self._decoder = await asyncio.to_thread(self._load)
        self._pool = DecodePool(self.workers)
        self._pool.start()
        self._ready.set()
        log.info("local engine ready: %s", self.describe())

    def resources(self) -> tuple[Decoder, DecodePool] | None:
        """The decoder and pool once :meth:`startup` has run (sessions call this)."""
        if self._decoder is None or self._pool is None or not self._ready.is_set():
            return None
        return self._decoder, self._pool

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def _load(self) -> WhisperDecoder:
        s = self.settings
        model_dir: Path = resolve_model(s.local_model)
        log.info("loading %s (%s) from %s", s.local_model, s.local_compute_type, model_dir)
        return WhisperDecoder(
            model_dir, compute_type=s.local_compute_type, workers=self.workers, language=s.local_language
        )

    async def shutdown(self) -> None:
        self._ready.clear()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    def open(self, call: CallInfo) -> LocalSession:
        if self._active >= self.max_calls:
            raise EngineBusy(f"local engine at capacity ({self.max_calls} calls)")
        self._active += 1
        metrics.ACTIVE_SESSIONS.set(self._active)
        log.info("call=%s admitted (%d/%d)", call.call_sid, self._active, self.max_calls)
        return LocalSession(call, self, self._options, self._release)

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
            "ready": self._ready.is_set(),
            "worker_restarts": self._pool.restarts if self._pool is not None else 0,
        }
