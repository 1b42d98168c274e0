"""One JSON object per event per line, to stdout or a file (the shape of ``/live``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import orjson

from callscribe.events import Event, event_to_dict
from callscribe.sinks.base import Sink


class JsonLinesSink(Sink):
    """Appends events to ``path`` (``-`` = stdout); flushed per line so a tail -f sees them at once."""

    name = "jsonl"

    def __init__(self, path: str = "-") -> None:
        self._path = path
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        if self._path == "-":
            self._file = sys.stdout.buffer
        else:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115, ASYNC230 - opened once, lives as long as the sink

    async def handle(self, event: Event) -> None:
        if self._file is None:
            await self.start()
        assert self._file is not None
        self._file.write(orjson.dumps(event_to_dict(event)) + b"\n")
        self._file.flush()

    async def close(self) -> None:
        if self._file is not None and self._path != "-":
            self._file.close()
        self._file = None
