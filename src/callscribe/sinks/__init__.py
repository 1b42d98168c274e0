"""Where events go: every sink implements :class:`callscribe.sinks.base.Sink`."""

from __future__ import annotations

from callscribe.config import Settings
from callscribe.sinks.base import Sink
from callscribe.sinks.console import ConsoleSink
from callscribe.sinks.jsonl import JsonLinesSink

__all__ = ["Sink", "create_sinks"]


def create_sinks(settings: Settings) -> list[Sink]:
    """The sinks named in ``SINKS``, in order."""
    sinks: list[Sink] = []
    for name in dict.fromkeys(settings.sinks):
        if name == "console":
            sinks.append(ConsoleSink())
        elif name == "jsonl":
            sinks.append(JsonLinesSink(settings.jsonl_path))
    return sinks
