"""One call's path: Twilio messages in → engine session → events out to the sinks.

The bridge does no socket I/O itself: the ASGI handler hands it each message (``receive``, which
is synchronous and cheap, so the read loop never waits) and tells it when the socket closed
(``close``, which waits for the drain). Everything a call produces leaves through ``publish``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from callscribe.audit import MetricsTally, call_audit
from callscribe.engines.base import Engine, EngineBusy, EngineSession
from callscribe.events import CallEnded, CallError, CallInfo, CallStarted, Event, TranscriptEvent
from callscribe.observability import metrics
from callscribe.observability.context import bind_call
from callscribe.observability.tracing import OpenSpan, call_span
from callscribe.protocol.twilio import Audio, Dtmf, Malformed, Started, Stopped, TwilioEvent, TwilioStream

log = logging.getLogger(__name__)

_LOG_FIRST = 5  # malformed messages of one kind logged in full per call, then every 100th


class EngineRouter:
    """Opens sessions on the primary engine, or on the fallback when the primary is at capacity."""

    def __init__(self, primary: Engine, fallback: Engine | None = None) -> None:
        self.primary = primary
        self.fallback = fallback

    @property
    def engines(self) -> list[Engine]:
        return [e for e in (self.primary, self.fallback) if e is not None]

    def open(self, call: CallInfo) -> tuple[Engine, EngineSession]:
        try:
            return self.primary, self.primary.open(call)
        except EngineBusy:
            if self.fallback is None:
                raise
            log.warning(
                "call %s: %s at capacity, using %s", call.call_sid, self.primary.name, self.fallback.name
            )
            return self.fallback, self.fallback.open(call)


class CallBridge:
    """Drives one Media Streams connection from ``connected`` to the last flushed final."""

    def __init__(
        self,
        engines: EngineRouter,
        publish: Callable[[Event], None],
        *,
        speakers: dict | None = None,
        drain_timeout: float = 8.0,
    ) -> None:
        self.stream = TwilioStream(speakers=speakers)
        self.session: EngineSession | None = None
        self.refused: str | None = None
        self._engines = engines
        self._publish = publish
        self._drain_timeout = drain_timeout
        self._pump: asyncio.Task[None] | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._fed = 0  # audio bytes handed to the engine session
        self._no_engine = 0  # audio bytes that arrived with no session to take them (refused call)
        self._audio_t0: float | None = None  # wall clock of the first audio: maps stream time to wall time
        self._partials_seen: set[str] = set()
        self.tally = MetricsTally()
        self.span: OpenSpan | None = None
        self._engine_span: OpenSpan | None = None

    @property
    def call_sid(self) -> str:
        return self.stream.call_sid

    @property
    def done(self) -> bool:
        return self._finishing is not None and self._finishing.done()

    @property
    def started(self) -> bool:
        """The stream's ``start`` arrived."""
        return self.stream.call is not None

    def reject(self, kind: str, detail: str) -> None:
        """Count and log a message refused before parsing (e.g. oversize); the call goes on."""
        self.stream.counters.messages += 1
        self.stream.counters.malformed[kind] += 1
        self._on(Malformed(kind, detail))

    def end(self, reason: str) -> None:
        """End the stream now (idle, too long, draining): as if Twilio had sent ``stop``."""
        for event in self.stream.close():
            if isinstance(event, Stopped):
                event = Stopped(reason)
            self._on(event)

    def receive(self, message: str | bytes) -> None:
        """Handle one WebSocket message. Never raises on bad input; never waits."""
        for event in self.stream.receive(message):
            self._on(event)

    async def close(self) -> None:
        """The socket closed: stop the stream if Twilio did not, then wait for the drain."""
        for event in self.stream.close():
            self._on(event)
        if self._finishing is not None:
            await asyncio.shield(self._finishing)

    def push_metrics(self) -> None:
        """Move this call's counters into Prometheus (deltas; called a few times a second)."""
        self.tally.push(self.stream.counters, self.session.counters if self.session else {})

    def _on(self, event: TwilioEvent) -> None:
        if isinstance(event, Audio):
            if self.session is not None:
                self.session.feed(event.track, event.data)
                self._fed += len(event.data)
            else:
                self._no_engine += len(event.data)
            if self._audio_t0 is None:
                self._audio_t0 = time.time() - len(event.data) / 8000
        elif isinstance(event, Started):
            self._open(event.call)
        elif isinstance(event, Stopped):
            self._finishing = asyncio.create_task(self._finish(event.reason), name=f"finish:{self.call_sid}")
        elif isinstance(event, Malformed):
            n = self.stream.counters.malformed[event.kind]
            if n <= _LOG_FIRST or n % 100 == 0:
                log.warning(
                    "call %s: malformed message #%d (%s): %s",
                    self.call_sid or "?",
                    n,
                    event.kind,
                    event.detail[:200],
                )
        elif isinstance(event, Dtmf):
            log.info("call %s: DTMF %s on %s", self.call_sid, event.digit, event.track)

    def _open(self, call: CallInfo) -> None:
        bind_call(call.call_sid, call.stream_sid)  # log lines of this task and its children carry them
        self.span = call_span(call.call_sid, call.stream_sid, tracks="+".join(call.tracks))
        try:
            engine, self.session = self._engines.open(call)
        except EngineBusy as exc:
            self.span.end(error="engine at capacity", outcome="refused")
            self.refused = f"at capacity: {exc}"
            log.warning("call %s refused: %s", call.call_sid, self.refused)
            self._publish(CallError(call.call_sid, call.stream_sid, "capacity", self.refused))
            return
        log.info(
            "call %s stream %s started: tracks %s, engine %s, parameters %s",
            call.call_sid,
            call.stream_sid,
            "+".join(call.tracks),
            engine.name,
            call.custom_parameters,
        )
        self.tally.engine_name = engine.name
        self._engine_span = self.span.start_child("engine.session", engine=engine.name)
        self._publish(CallStarted(call, engine.name))
        self._pump = asyncio.create_task(self._pump_events(self.session), name=f"pump:{call.call_sid}")
        self._starting = asyncio.create_task(self.session.start(), name=f"start:{call.call_sid}")
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        call = self.stream.call
        assert call is not None
        log.error("call %s: engine failed to start: %r", call.call_sid, task.exception())
        self._publish(CallError(call.call_sid, call.stream_sid, "engine.start", repr(task.exception())))

    async def _pump_events(self, session: EngineSession) -> None:
        async for event in session.events():
            if isinstance(event, TranscriptEvent) and self._audio_t0 is not None:
                self._observe_latency(event)
            self._publish(event)

    def _observe_latency(self, event: TranscriptEvent) -> None:
        """End of speech → final, start of speech → first partial, on the stream's wall clock."""
        assert self._audio_t0 is not None
        if event.is_final:
            metrics.FINAL_LATENCY.observe(max(0.0, event.received_at - (self._audio_t0 + event.end)))
            self._partials_seen.discard(event.utterance_id)
        elif event.utterance_id not in self._partials_seen:
            self._partials_seen.add(event.utterance_id)
            metrics.FIRST_PARTIAL_LATENCY.observe(max(0.0, event.received_at - (self._audio_t0 + event.start)))

    async def _finish(self, reason: str) -> None:
        call = self.stream.call
        session_counters: dict[str, int] = {}
        if self.session is not None and call is not None:
            session = self.session
            try:
                await session.finish(timeout=self._drain_timeout)
            except Exception as exc:
                log.exception("call %s: engine finish failed", call.call_sid)
                self._publish(CallError(call.call_sid, call.stream_sid, "engine.finish", repr(exc)))
                await session.aclose()
            if self._pump is not None:
                try:
                    await asyncio.wait_for(self._pump, timeout=self._drain_timeout + 2)
                except TimeoutError:
                    log.error("call %s: engine events did not end after finish", call.call_sid)
                    await session.aclose()
            session_counters = {f"engine.{k}": v for k, v in session.counters.items()}
        if self._engine_span is not None:
            self._engine_span.end()
        if call is not None:
            engine_counters = self.session.counters if self.session is not None else {}
            self.push_metrics()
            audit = call_audit(self.stream.counters, self._fed, self._no_engine, engine_counters)
            if audit["audit.balance"] != 0:
                log.error("call %s: audio ledger does not balance: %s", call.call_sid, audit)
            counters = self.stream.counters.as_dict() | session_counters | audit
            outcome = "refused" if self.refused else reason if reason in metrics.CALL_OUTCOMES else "completed"
            metrics.CALLS.labels(outcome=outcome).inc()
            if self.span is not None:
                self.span.end(outcome=outcome, reason=reason, audio_seconds=self.stream.duration())
            duration = self.stream.duration()
            log.info(
                "call %s ended (%s): %.1f s audio, counters %s", call.call_sid, reason, duration, counters
            )
            self._publish(CallEnded(call.call_sid, call.stream_sid, reason, duration, counters))
