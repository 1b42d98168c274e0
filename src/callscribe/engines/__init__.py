"""Speech-to-text engines behind one interface (:mod:`callscribe.engines.base`).

Engine modules are imported lazily: the embedded engine pulls in CTranslate2 and a model, which a
gateway running Gladia has no reason to load.
"""

from __future__ import annotations

from callscribe.config import ConfigError, EngineChoice, Settings
from callscribe.engines.base import Engine, EngineBusy, EngineSession

__all__ = ["Engine", "EngineBusy", "EngineSession", "create_engine", "create_engines"]


def create_engine(kind: EngineChoice, settings: Settings) -> Engine:
    """A new engine of ``kind`` configured from ``settings`` (not started yet)."""
    if kind is EngineChoice.LOCAL:
        from callscribe.engines.local.engine import LocalEngine

        return LocalEngine(settings)
    if kind is EngineChoice.GLADIA:
        if settings.gladia_api_key is None:
            raise ConfigError("GLADIA_API_KEY: required when ENGINE=gladia")
        from callscribe.engines.gladia import GladiaEngine

        return GladiaEngine(settings)
    raise ConfigError(f"ENGINE: unknown engine {kind!r}")


def create_engines(settings: Settings) -> tuple[Engine, Engine | None]:
    """The primary engine and, when configured, the fallback for calls beyond its capacity."""
    primary = create_engine(settings.resolved_engine, settings)
    fallback = None
    if settings.resolved_engine is EngineChoice.LOCAL and settings.local_over_capacity == "gladia":
        if settings.gladia_api_key is None:
            raise ConfigError("LOCAL_OVER_CAPACITY: 'gladia' needs GLADIA_API_KEY")
        fallback = create_engine(EngineChoice.GLADIA, settings)
    return primary, fallback
