"""Logging set-up: one line per record on stderr, readable text or JSON, naming the call.

``setup_logging(level, fmt)``; ``fmt="text"`` (default) prints ``12:00:01 INFO    name: [CA…] msg``,
``fmt="json"`` one JSON object per line (``LOG_FORMAT=json``, for containers)::

    {"ts": "2025-01-01T12:00:01.234Z", "level": "INFO", "logger": "callscribe.bridge",
     "msg": "…", "call_sid": "CA…", "stream_sid": "MZ…", "trace_id": "…", "span_id": "…", …extra}

``call_sid``/``stream_sid`` come from :func:`callscribe.observability.context.bind_call` (or an
explicit ``extra={"call_sid": …}``), ``trace_id``/``span_id`` from the current OpenTelemetry span
when one is recording, ``exc_info`` is the formatted traceback, and every other ``extra=`` field is
kept. Secrets stay out: ``RedactTokens`` (``token=…`` in query strings) sits on the root handler.

uvicorn's and gunicorn's loggers are taken over (their handlers removed, propagating to the root
handler) so access lines are formatted — and redacted — like ours; run uvicorn with
``log_config=None`` or call this after the server configured its logging.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from callscribe.observability.context import CALL_SID, STREAM_SID

try:  # traces are optional: without the API, no trace ids in logs
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover
    _otel_trace = None  # type: ignore[assignment]

LogFormat = Literal["text", "json"]

# Loggers servers configure with handlers of their own; ours replace them.
TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("x", logging.INFO, "x", 0, "x", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_MARK = "_callscribe_handler"


def _call_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    attrs = record.__dict__
    return attrs.get("call_sid") or CALL_SID.get(), attrs.get("stream_sid") or STREAM_SID.get()


class _Redactor:
    """Runs the token filter over text that is not the message (tracebacks, extra strings)."""

    def __init__(self, filt: logging.Filter | None) -> None:
        self.filt = filt

    def __call__(self, text: str) -> str:
        if self.filt is None or "token=" not in text.lower():
            return text
        probe = logging.LogRecord("redact", logging.INFO, "", 0, text, None, None)
        self.filt.filter(probe)
        return str(probe.msg)


class TextFormatter(logging.Formatter):
    """The classic line, with ``[call_sid]`` before the message when a call is bound."""

    def __init__(self, redact: _Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(call_prefix)s%(message)s", "%H:%M:%S")
        self._redact = redact or _Redactor(None)

    def format(self, record: logging.LogRecord) -> str:
        call_sid, _ = _call_of(record)
        record.call_prefix = f"[{call_sid}] " if call_sid else ""
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return self._redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (orjson), keys as in the module docstring."""

    def __init__(self, redact: _Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or _Redactor(None)

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_sid, stream_sid = _call_of(record)
        if call_sid:
            out["call_sid"] = call_sid
        if stream_sid:
            out["stream_sid"] = stream_sid
        if _otel_trace is not None:
            ctx = _otel_trace.get_current_span().get_span_context()
            if ctx.is_valid:
                out["trace_id"] = f"{ctx.trace_id:032x}"
                out["span_id"] = f"{ctx.span_id:016x}"
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in ("call_sid", "stream_sid", "call_prefix") or key.startswith("_"):
                continue
            out[key if key not in out else f"extra.{key}"] = (
                self._redact(value) if isinstance(value, str) else value
            )
        if record.exc_info:
            out["exc_info"] = self._redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        elif record.exc_text:
            out["exc_info"] = self._redact(record.exc_text)
        if record.stack_info:
            out["stack_info"] = record.stack_info
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an int beyond 64 bits in an extra
            return orjson.dumps({k: v if isinstance(v, str) else repr(v) for k, v in out.items()}).decode()


def _token_filter() -> logging.Filter | None:
    try:
        from callscribe.server.auth import RedactTokens
    except ImportError:  # pragma: no cover - the server extras are always installed
        return None
    return RedactTokens()


def setup_logging(level: str | int = "info", fmt: LogFormat = "text", *, redact: bool = True) -> logging.Handler:
    """Configure the root logger (replacing its handlers) and return the one handler installed.

    ``redact``: mask card numbers and personal data in every line (``REDACT``), as in transcripts.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    filt = _token_filter()
    redact = _Redactor(filt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    if filt is not None:
        handler.addFilter(filt)
    if redact:
        from callscribe.intelligence.logfilter import RedactPII

        handler.addFilter(RedactPII())
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):  # as basicConfig(force=True) did
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)

    for name in TAKEN_OVER:  # access and error lines formatted and redacted like ours
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    # websockets logs every handshake failure at ERROR with a traceback; ours is more useful.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin" lines on every start
    return handler
