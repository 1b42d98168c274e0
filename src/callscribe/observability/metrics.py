"""Prometheus metrics of the gateway (``callscribe_`` prefix), safe under several worker processes.

Single process (``callscribe serve`` with one worker): the metrics live in prometheus-client's
default ``REGISTRY``, next to the embedded engine's ``callscribe_local_*`` metrics and the process
and platform collectors; :func:`render_metrics` exposes that registry.

Several workers (gunicorn + uvicorn workers): every process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` and :func:`render_metrics` aggregates all of them, whichever worker
answers the scrape. prometheus-client decides between the two modes **once, when it is first
imported**, from that environment variable, so the variable must be set in the process that
forks the workers before anything imports ``prometheus_client``:

* ``callscribe serve`` calls :func:`prepare_multiprocess` first thing (it creates the directory
  and removes the files of a previous run). This module does not import ``prometheus_client``
  until a metric is first used, so importing it to call :func:`prepare_multiprocess` is safe;
  :func:`prepare_multiprocess` raises if the client was already imported in single-process mode.
* gunicorn's ``child_exit(server, worker)`` hook calls :func:`mark_process_dead` with
  ``worker.pid``, so the gauges of a dead worker (``livesum``/``livemax``) stop counting.

Gauges declare how their per-process values combine (``multiprocess_mode``): the calls in
progress are the sum over live workers; "draining" is the max over live workers.

Label values are fixed small sets (see each metric's ``labels`` note): never a call SID.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

ENV = "PROMETHEUS_MULTIPROC_DIR"

# End of speech → final, and call start/speech start → first partial: 50 ms .. 5 s.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
# How late the event loop woke up: 1 ms .. 1 s.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Documented label values (what the code that increments should use).
CALL_OUTCOMES = ("completed", "refused", "error", "idle_timeout", "max_duration", "drained")
REFUSAL_REASONS = ("capacity", "signature", "draining", "engine")
SIGNATURE_KINDS = ("http", "websocket")

if TYPE_CHECKING:
    ACTIVE_CALLS: Gauge
    CALLS: Counter
    CALLS_REFUSED: Counter
    FRAMES_RECEIVED: Counter
    FRAMES_FORWARDED: Counter
    FRAMES_DROPPED: Counter
    BYTES_RECEIVED: Counter
    BYTES_FORWARDED: Counter
    MALFORMED_MESSAGES: Counter
    GAPS_FILLED: Counter
    ENGINE_RECONNECTS: Counter
    FINAL_LATENCY: Histogram
    FIRST_PARTIAL_LATENCY: Histogram
    SINK_ERRORS: Counter
    SINK_RETRIES: Counter
    EVENT_LOOP_LAG: Histogram
    SIGNATURE_REJECTIONS: Counter
    AUTH_FAILURES: Counter
    REDACTIONS: Counter
    TRIGGERS_FIRED: Counter
    DRAINING: Gauge


def _define() -> dict[str, Any]:
    """Create the metrics (once per process): the first use imports ``prometheus_client``."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "ACTIVE_CALLS": Gauge(
            "callscribe_active_calls",
            "Media Streams being transcribed now (summed over live workers).",
            multiprocess_mode="livesum",
        ),
        "CALLS": Counter(
            "callscribe_calls_total",
            "Calls ended, by outcome (completed|refused|error|idle_timeout|max_duration|drained).",
            ["outcome"],
        ),
        "CALLS_REFUSED": Counter(
            "callscribe_calls_refused_total",
            "Calls refused, by reason (capacity|signature|draining|engine).",
            ["reason"],
        ),
        "FRAMES_RECEIVED": Counter(
            "callscribe_frames_received_total", "Twilio media frames received (all tracks)."
        ),
        "FRAMES_FORWARDED": Counter(
            "callscribe_frames_forwarded_total", "Media frames handed to an engine (gap fill included)."
        ),
        "FRAMES_DROPPED": Counter(
            "callscribe_frames_dropped_total",
            "Media frames not forwarded, by reason (duplicate, late, buffer_full, no_session, ...).",
            ["reason"],
        ),
        "BYTES_RECEIVED": Counter(
            "callscribe_bytes_received_total", "μ-law audio bytes received from Twilio (decoded payloads)."
        ),
        "BYTES_FORWARDED": Counter("callscribe_bytes_forwarded_total", "Audio bytes handed to an engine."),
        "MALFORMED_MESSAGES": Counter(
            "callscribe_malformed_messages_total", "Malformed Twilio messages, by kind.", ["kind"]
        ),
        "GAPS_FILLED": Counter(
            "callscribe_gaps_filled_total", "Missing media frames replaced with μ-law silence."
        ),
        "ENGINE_RECONNECTS": Counter(
            "callscribe_engine_reconnects_total", "Engine session reconnects, by engine.", ["engine"]
        ),
        "FINAL_LATENCY": Histogram(
            "callscribe_final_latency_seconds",
            "End of speech (end of the utterance's audio) to its final transcript.",
            buckets=LATENCY_BUCKETS,
        ),
        "FIRST_PARTIAL_LATENCY": Histogram(
            "callscribe_first_partial_latency_seconds",
            "Start of an utterance's speech to its first partial transcript.",
            buckets=LATENCY_BUCKETS,
        ),
        "SINK_ERRORS": Counter(
            "callscribe_sink_errors_total", "Deliveries a sink failed, by sink.", ["sink"]
        ),
        "SINK_RETRIES": Counter(
            "callscribe_sink_retries_total", "Deliveries a sink retried, by sink.", ["sink"]
        ),
        "EVENT_LOOP_LAG": Histogram(
            "callscribe_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 0.25 s per worker).",
            buckets=LOOP_LAG_BUCKETS,
        ),
        "SIGNATURE_REJECTIONS": Counter(
            "callscribe_signature_rejections_total",
            "Requests refused for a bad X-Twilio-Signature, by kind (http|websocket).",
            ["kind"],
        ),
        "AUTH_FAILURES": Counter(
            "callscribe_auth_failures_total", "Bearer-token refusals, by reason.", ["reason"]
        ),
        "REDACTIONS": Counter(
            "callscribe_redactions_total", "Entities masked in transcripts, by entity.", ["entity"]
        ),
        "TRIGGERS_FIRED": Counter(
            "callscribe_triggers_fired_total", "Phrase triggers fired, by rule.", ["rule"]
        ),
        "DRAINING": Gauge(
            "callscribe_draining",
            "1 while a worker is draining (SIGTERM): no new calls, open calls finishing.",
            # live: a worker that drained and exited stops counting once child_exit marks it dead
            multiprocess_mode="livemax",
        ),
    }


NAMES = frozenset(
    {
        "ACTIVE_CALLS", "CALLS", "CALLS_REFUSED", "FRAMES_RECEIVED", "FRAMES_FORWARDED",
        "FRAMES_DROPPED", "BYTES_RECEIVED", "BYTES_FORWARDED", "MALFORMED_MESSAGES", "GAPS_FILLED",
        "ENGINE_RECONNECTS", "FINAL_LATENCY", "FIRST_PARTIAL_LATENCY", "SINK_ERRORS", "SINK_RETRIES",
        "EVENT_LOOP_LAG", "SIGNATURE_REJECTIONS", "AUTH_FAILURES", "REDACTIONS", "TRIGGERS_FIRED",
        "DRAINING",
    }
)  # fmt: skip


def ensure_defined() -> None:
    """Create (and register) every metric now; idempotent. Later reads are plain attributes."""
    module = sys.modules[__name__]
    if "ACTIVE_CALLS" not in module.__dict__:
        module.__dict__.update(_define())


def __getattr__(name: str) -> Any:  # PEP 562: the metrics come into being on first use
    if name in NAMES:
        ensure_defined()
        return sys.modules[__name__].__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, or None in single-process mode."""
    return os.environ.get(ENV) or None


def is_multiprocess() -> bool:
    return multiprocess_dir() is not None


def _client_mode_fixed() -> str | None:
    """How an already-imported prometheus-client records values: 'single', 'multi', or None (not yet)."""
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return None
    name = getattr(values.ValueClass, "__name__", "")
    return "single" if name == "MutexValue" else "multi"


def prepare_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Make this process (and the workers it forks or spawns) write metrics to ``directory``.

    Call once, in the process that starts the workers, before anything imports
    ``prometheus_client``: it creates the directory, removes the ``*.db`` files a previous run
    left (they would be counted again) and sets ``PROMETHEUS_MULTIPROC_DIR``. Raises
    :class:`RuntimeError` when prometheus-client was already imported in single-process mode
    (the workers forked from here would never write their files).
    """
    path = Path(directory).resolve()
    if _client_mode_fixed() == "single":
        raise RuntimeError(
            "prepare_multiprocess() must run before anything imports prometheus_client "
            f"(it was imported without {ENV}; metrics would not be shared between workers)"
        )
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV] = str(path)
    return path


def mark_process_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: a worker died, its live gauges must stop counting."""
    directory = multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def render_metrics() -> tuple[bytes, str]:
    """The exposition (body, content type): all workers' metrics aggregated in multiprocess mode,
    else the default registry (with ``callscribe_local_*``, process and platform metrics)."""
    ensure_defined()
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST
