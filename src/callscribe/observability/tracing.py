"""OpenTelemetry traces: one span per call, children for its engine session and each delivery.

``setup_tracing(service_name, enabled)`` once at start-up (``enabled=None``: on iff
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set). On, spans go
through a ``BatchSpanProcessor`` to the OTLP/HTTP exporter, which reads the standard
``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout); ``OTEL_TRACES_SAMPLER`` and
``OTEL_SDK_DISABLED`` are honoured by the SDK. Off, nothing of the SDK is imported and every
helper returns a non-recording span without touching the context: zero cost.

A call's span outlives any one ``with`` block (it starts when the stream starts and ends after the
drain, in another task), so :func:`call_span` does not make it current; it returns an
:class:`OpenSpan` holding the span and a context for its children::

    call = call_span(call_sid, stream_sid, tracks="inbound+outbound")       # in the /media handler
    engine = call.start_child("engine.session", engine="local")             # ends in _finish
    with child_span("sink.deliver", call, sink="webhook"):                  # a delivery, any task
        ...
    engine.end(); call.end(outcome="completed")

``with call.activate():`` makes the call span current for a block of one task (logs then carry
its ``trace_id``; spans started inside become its children).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SCOPE = "callscribe"

_NOOP: Tracer = trace.NoOpTracer()
_tracer: Tracer = _NOOP
_provider: TracerProvider | None = None


def setup_tracing(
    service_name: str = "callscribe",
    enabled: bool | None = None,
    *,
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on or off for this process; returns whether it is on.

    ``exporter`` replaces the OTLP/HTTP exporter (tests pass an ``InMemorySpanExporter``). Calling
    again replaces the previous set-up (its pending spans are flushed first).
    """
    global _tracer, _provider
    if enabled is None:
        enabled = any(os.environ.get(name) for name in ENDPOINT_ENVS)
    shutdown_tracing()
    if not enabled:
        return False

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from callscribe import __version__

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # the global one can be set once: for instrumentations
    _provider = provider
    _tracer = provider.get_tracer(SCOPE, __version__)
    return True


def flush_tracing(timeout_ms: int = 5000) -> bool:
    """Export the spans waiting in the batch now (True when done in time, or when tracing is off)."""
    return _provider.force_flush(timeout_ms) if _provider is not None else True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (server shutdown); tracing is off afterwards."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, _NOOP
    if provider is not None:
        provider.shutdown()


def tracing_enabled() -> bool:
    return _provider is not None


def tracer() -> Tracer:
    """The tracer of callscribe's spans (a no-op tracer when tracing is off)."""
    return _tracer


def _value(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = list(value)
        if all(isinstance(v, str) for v in items) or all(isinstance(v, int | float) for v in items):
            return items
    return str(value)


def _attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attribute values: None dropped, anything exotic as its str()."""
    return {k: _value(v) for k, v in attrs.items() if v is not None}


class OpenSpan:
    """A span that stays open across awaits and tasks, with the context its children hang from."""

    __slots__ = ("_ended", "context", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span) if span.is_recording() else None
        self._ended = False

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    def set(self, **attrs: Any) -> None:
        if self.recording:
            self.span.set_attributes(_attrs(attrs))

    def event(self, name: str, **attrs: Any) -> None:
        if self.recording:
            self.span.add_event(name, _attrs(attrs))

    def error(self, exc: BaseException | str) -> None:
        """Mark the span failed (an exception is recorded with its traceback)."""
        if not self.recording:
            return
        if isinstance(exc, BaseException):
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        else:
            self.span.set_status(Status(StatusCode.ERROR, exc))

    def end(self, error: BaseException | str | None = None, **attrs: Any) -> None:
        """End the span (once; later calls do nothing), setting ``attrs`` and ``error`` first."""
        if self._ended:
            return
        self._ended = True
        if attrs:
            self.set(**attrs)
        if error is not None:
            self.error(error)
        self.span.end()

    def start_child(self, name: str, **attrs: Any) -> OpenSpan:
        """A child span that also outlives a block (e.g. the engine session); end it yourself."""
        return start_span(name, self, **attrs)

    def child(self, name: str, **attrs: Any) -> Any:
        """``with call.child("sink.deliver", sink="webhook"):`` — same as :func:`child_span`."""
        return child_span(name, self, **attrs)

    @contextmanager
    def activate(self) -> Iterator[Span]:
        """Make this span current for a block of the current task."""
        if self.context is None:
            yield self.span
            return
        token = otel_context.attach(self.context)
        try:
            yield self.span
        finally:
            otel_context.detach(token)


CallSpan = OpenSpan

Parent = OpenSpan | Span | None


def _parent_context(parent: Parent) -> Any:
    if parent is None:
        return None  # the current context
    if isinstance(parent, OpenSpan):
        return parent.context
    return trace.set_span_in_context(parent)


def start_span(
    name: str, parent: Parent = None, *, span_kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> OpenSpan:
    """Start a span that is not made current (end it with ``.end()``); ``parent`` None = current."""
    if _provider is None:
        return OpenSpan(INVALID_SPAN)
    return OpenSpan(
        _tracer.start_span(name, context=_parent_context(parent), kind=span_kind, attributes=_attrs(attrs))
    )


def call_span(call_sid: str | None, stream_sid: str | None, **attrs: Any) -> OpenSpan:
    """The span of one call (``callscribe.call``), from the stream's start to its last final."""
    return start_span(
        "callscribe.call",
        None,
        span_kind=SpanKind.SERVER,
        **{"callscribe.call_sid": call_sid, "callscribe.stream_sid": stream_sid},
        **attrs,
    )


@contextmanager
def child_span(
    name: str, parent_span: Parent = None, *, span_kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> Iterator[Span]:
    """A span for a block (a delivery, a reconnect), child of ``parent_span``, current inside it.

    An exception leaving the block is recorded on the span (status ERROR) and re-raised.
    """
    if _provider is None:
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name, context=_parent_context(parent_span), kind=span_kind, attributes=_attrs(attrs)
    ) as span:
        yield span
