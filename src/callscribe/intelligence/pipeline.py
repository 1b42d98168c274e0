"""The stage between the calls and the sinks: redaction first, then phrase triggers and notes.

Every event a call produces passes through :meth:`Intelligence.publish` before any sink, log or
feed sees it, so unredacted text never leaves the process (unless ``REDACT=false``). Redaction
may hold a final for a moment (a card number read across two utterances); a timer releases it.
Triggers see redacted text; notes are built when the call ends and ride on its ``call.ended``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import yake  # noqa: F401 - imported at start-up, not when the first call ends (0.4 s)

from callscribe.config import ConfigError, Settings
from callscribe.events import CallEnded, Event, TranscriptEvent, TriggerFired
from callscribe.intelligence.notes import NotesBuilder, summarize
from callscribe.intelligence.redaction import Redactor
from callscribe.intelligence.triggers import TriggerEngine
from callscribe.observability import metrics

log = logging.getLogger(__name__)

_TRANSCRIPT_CHARS = 40_000  # per call, for the optional written summary: bounded memory
_RELOAD_EVERY = 2.0  # seconds between checks of the trigger file


class Intelligence:
    """Redacts, fires triggers and builds notes; ``publish`` is synchronous and cheap."""

    def __init__(self, settings: Settings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self._out = publish
        self.redactor = (
            Redactor(
                entities=settings.redact_entities,
                card_mask=settings.redact_card_mask,
                hold_seconds=settings.redact_hold_seconds,
            )
            if settings.redact
            else None
        )
        try:
            self.triggers = TriggerEngine(settings.triggers_path) if settings.triggers_path else None
        except ValueError as exc:  # a bad rules file stops the start with one line, like any setting
            raise ConfigError(f"TRIGGERS_PATH: {exc}") from None
        self.notes = NotesBuilder()
        self._redactions: dict[str, Counter[str]] = {}
        self._transcripts: dict[str, list[str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._last_reload = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        if not settings.redact:
            log.warning("REDACT=false: card numbers and personal data reach every sink unmasked")

    # --- entry point

    def publish(self, event: Event) -> None:
        """Take one event from a call; what comes out goes to the sinks, redacted, in order."""
        if self.redactor is None:
            self._after(event)
            return
        loop = asyncio.get_running_loop()
        before = dict(self.redactor.counts)
        out = self.redactor.process(event, loop.time())
        self._count_redactions(event, before)
        for item in out:
            self._after(item)
        self._arm(loop)

    async def flush(self, timeout: float = 30.0) -> None:
        """Release held finals and wait for notes in progress (the drain calls this)."""
        if self.redactor is not None:
            for item in self.redactor.poll(float("inf")):
                self._after(item)
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    # --- internals

    def _count_redactions(self, event: Event, before: dict[str, int]) -> None:
        assert self.redactor is not None
        after = self.redactor.counts
        if after == before:
            return
        per_call = self._redactions.setdefault(event.call_sid, Counter())
        for entity, n in after.items():
            added = n - before.get(entity, 0)
            if added > 0 and not entity.startswith("partial."):
                per_call[entity] += added
                metrics.REDACTIONS.labels(entity=entity).inc(added)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.redactor is not None
        deadline = self.redactor.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer.when() <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        assert self.redactor is not None
        self._timer = None
        loop = asyncio.get_running_loop()
        for item in self.redactor.poll(loop.time()):
            self._after(item)
        self._arm(loop)

    def _after(self, event: Event) -> None:
        """An event after redaction: triggers, notes, then out to the sinks."""
        if isinstance(event, TranscriptEvent):
            self.notes.observe(event)
            self._out(event)
            if event.is_final and event.text:
                lines = self._transcripts.setdefault(event.call_sid, [])
                if sum(map(len, lines)) < _TRANSCRIPT_CHARS:
                    lines.append(f"{event.speaker}: {event.text}")
            for fired in self._fire(event):
                self.notes.observe(fired)
                metrics.TRIGGERS_FIRED.labels(rule=fired.rule_id).inc()
                self._out(fired)
        elif isinstance(event, CallEnded):
            self._ended(event)
        else:
            self.notes.observe(event)
            self._out(event)

    def _fire(self, event: TranscriptEvent) -> list[TriggerFired]:
        if self.triggers is None:
            return []
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_reload > _RELOAD_EVERY:
            self._last_reload = loop.time()
            self.triggers.maybe_reload()  # logs what it loaded, or why it kept the old rules
        try:
            return self.triggers.process(event)
        except Exception:  # a bad rule must not cost the transcript
            log.exception("trigger rules failed on call %s", event.call_sid)
            return []

    def _ended(self, event: CallEnded) -> None:
        if self.triggers is not None:
            self.triggers.end_call(event.call_sid)
        redactions = dict(self._redactions.pop(event.call_sid, Counter()))
        transcript = "\n".join(self._transcripts.pop(event.call_sid, []))
        # keyword extraction takes ~0.1 s on a long call: off the loop that relays everyone's audio
        task = asyncio.create_task(self._with_notes(event, redactions, transcript))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _with_notes(self, event: CallEnded, redactions: dict[str, int], transcript: str) -> None:
        notes: dict[str, Any] | None = None
        try:
            notes = await asyncio.to_thread(self.notes.build, event, redactions)
            if self.settings.notes_llm_url and transcript:
                key = self.settings.notes_llm_api_key
                notes["summary"] = await summarize(
                    notes,
                    transcript,
                    base_url=str(self.settings.notes_llm_url),
                    model=self.settings.notes_llm_model,
                    api_key=key.get_secret_value() if key else None,
                )
        except Exception:  # notes are extra: the call.ended event goes out regardless
            log.exception("notes for call %s failed", event.call_sid)
        finally:
            self._out(replace(event, notes=notes))
