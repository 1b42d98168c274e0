"""Prints transcripts for people: finals like the Gladia blog (``📝 Transcript: …``), partials in place."""

from __future__ import annotations

import sys
from typing import TextIO

from callscribe.events import CallEnded, CallError, CallStarted, Event, TranscriptEvent
from callscribe.sinks.base import Sink

_CLEAR_LINE = "\r\x1b[2K"


class ConsoleSink(Sink):
    """Finals as lines, speaker-labelled; on a terminal the latest partial updates one line in place."""

    name = "console"

    def __init__(self, stream: TextIO | None = None, *, partials: bool | None = None) -> None:
        self._out = stream or sys.stdout
        self._tty = self._out.isatty()
        self._partials = self._tty if partials is None else partials
        self._partial_shown = False

    async def handle(self, event: Event) -> None:
        if isinstance(event, TranscriptEvent):
            if event.is_final:
                if event.text.strip():
                    self._line(f"📝 Transcript [{event.speaker}]: {event.text.strip()}")
            elif self._partials and event.text.strip():
                if self._tty:
                    self._out.write(f"{_CLEAR_LINE}… [{event.speaker}] {event.text.strip()}")
                    self._partial_shown = True
                else:
                    self._out.write(f"… [{event.speaker}] {event.text.strip()}\n")
        elif isinstance(event, CallStarted):
            tracks = "+".join(event.call.tracks)
            self._line(f"📞 Call {event.call.call_sid} started ({tracks}, engine {event.engine})")
        elif isinstance(event, CallEnded):
            self._line(f"📴 Call {event.call_sid} ended ({event.reason}, {event.duration:.1f} s of audio)")
        elif isinstance(event, CallError):
            self._line(f"⚠️  Call {event.call_sid}: {event.code}: {event.message}")
        self._out.flush()

    def _line(self, text: str) -> None:
        if self._partial_shown:
            self._out.write(_CLEAR_LINE)
            self._partial_shown = False
        self._out.write(text + "\n")
