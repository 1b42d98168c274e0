"""What ``callscribe simulate`` shows while a call runs.

On a terminal: a progress bar (audio seconds sent) with the current partials updating in place
under it, and finals printed above it as lines. Elsewhere: finals only, as plain lines. ``--json``
prints every received event as a JSON line on stdout instead; ``--quiet`` prints nothing here.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from callscribe.simulator.report import ReceivedEvent


def final_line(data: dict[str, Any]) -> str:
    """``[caller 1.2–3.4s] text``"""
    speaker = data.get("speaker") or data.get("track", "?")
    return f"[{speaker} {float(data.get('start', 0)):.1f}–{float(data.get('end', 0)):.1f}s] {data.get('text', '')}"


def _partial_line(data: dict[str, Any]) -> str:
    speaker = data.get("speaker") or data.get("track", "?")
    return f"[{speaker} {float(data.get('start', 0)):.1f}s…] {data.get('text', '')}"


class Display:
    """Receives progress and events from the runner and renders them."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        json_lines: bool = False,
        console: Console | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self.out = out or sys.stdout
        self.console = console or Console(file=self.out)
        self.rich = self.console.is_terminal and not quiet and not json_lines
        self._partials: dict[str, str] = {}  # utterance_id → line, in arrival order
        self._progress = Progress(
            TextColumn("[bold]sending"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} s audio"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task: TaskID | None = None
        self._live: Live | None = None

    def __enter__(self) -> Display:
        if self.rich:
            self._live = Live(
                console=self.console, get_renderable=self._render, refresh_per_second=10, transient=True
            )
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> RenderableType:
        # Text, not markup strings: transcripts contain brackets of their own.
        lines = [Text(line, style="dim italic") for line in self._partials.values()]
        return Group(self._progress, *lines)

    def progress(self, sent_seconds: float, total_seconds: float) -> None:
        if not self.rich:
            return
        if self._task is None:
            self._task = self._progress.add_task("audio", total=total_seconds)
        self._progress.update(self._task, completed=sent_seconds)

    def event(self, event: ReceivedEvent) -> None:
        data = event.data
        if self.json_lines:
            self.out.write(orjson.dumps(data).decode() + "\n")
            self.out.flush()
            return
        if self.quiet:
            return
        uid = str(data.get("utterance_id", ""))
        if event.is_final:
            self._partials.pop(uid, None)
            self._print(final_line(data))
        elif event.is_transcript:
            if self.rich:  # a partial replaces the previous one of its utterance in place
                self._partials[uid] = _partial_line(data)
        elif event.type == "call.error":
            self._print(f"call error {data.get('code', '')}: {data.get('message', '')}", style="red")
        elif event.type in ("call.started", "call.ended") and self.rich:
            self._print(f"{event.type} {data.get('call_sid', '')}", style="dim")

    def _print(self, line: str, style: str | None = None) -> None:
        if self.rich:
            self.console.print(line, style=style, markup=False, highlight=False)
        else:
            self.out.write(line + "\n")
            self.out.flush()
