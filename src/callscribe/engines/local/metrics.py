"""Prometheus metrics of the embedded engine (default registry, ``callscribe_local_`` prefix)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# multiprocess_mode: under several workers (PROMETHEUS_MULTIPROC_DIR) the gauges sum over live workers.
QUEUE_DEPTH = Gauge(
    "callscribe_local_queue_depth", "Decodes waiting for a worker.", ["kind"], multiprocess_mode="livesum"
)
DECODE_SECONDS = Histogram(
    "callscribe_local_decode_seconds",
    "Wall time of one decode.",
    ["kind"],
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
REAL_TIME_FACTOR = Histogram(
    "callscribe_local_real_time_factor",
    "Decode wall time divided by the seconds of audio decoded.",
    ["kind"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
QUEUE_WAIT_SECONDS = Histogram(
    "callscribe_local_queue_wait_seconds",
    "Time a decode waited for a worker.",
    ["kind"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
ACTIVE_SESSIONS = Gauge(
    "callscribe_local_active_sessions", "Calls being transcribed.", multiprocess_mode="livesum"
)
PARTIALS_SKIPPED = Counter(
    "callscribe_local_partials_skipped_total", "Partial decodes folded into a newer one (coalesced)."
)
DECODE_ERRORS = Counter("callscribe_local_decode_errors_total", "Decodes that raised.", ["kind"])
