"""Where every byte of a call's audio went: the ledger that proves nothing was silently lost.

Three layers count independently: the Twilio protocol (payload bytes received, silence filled for
lost frames, late/duplicate bytes trimmed, malformed messages), the bridge (audio handed to the
engine, or dropped because no engine session exists) and the engine session (delivered, dropped
by reason, pending; :mod:`callscribe.engines.base`). :func:`call_audit` joins them; its
``audit.balance`` is 0 when they agree:

    received payload + filled silence = late/duplicate + no engine + delivered + engine drops + pending

Frames are reported as bytes / 160 (one 20 ms frame of one track). Prometheus gets the same figures
as deltas a few times a second (:class:`MetricsTally`), so the per-frame path does no metric work.
"""

from __future__ import annotations

from typing import Any

from callscribe.engines.base import BYTES_DELIVERED, BYTES_DROPPED, BYTES_PENDING
from callscribe.observability import metrics
from callscribe.protocol.twilio import StreamCounters

FRAME = 160  # μ-law bytes in one 20 ms frame of one track


def call_audit(stream: StreamCounters, bridge_fed: int, no_engine: int, engine: dict[str, int]) -> dict[str, int]:
    """The joined ledger of one call (``audit.*`` keys, bytes unless named ``frames``)."""
    filled = stream.gap_bytes + stream.leading_fill_bytes
    dropped = {
        "late_or_duplicate": stream.late_bytes_dropped,
        "no_engine": no_engine,
        **{
            k.removeprefix(BYTES_DROPPED + "."): v
            for k, v in engine.items()
            if k.startswith(BYTES_DROPPED + ".")
        },
    }
    delivered = engine.get(BYTES_DELIVERED, 0)
    pending = engine.get(BYTES_PENDING, 0)
    total_in = stream.media_bytes + filled
    out: dict[str, int] = {
        "audit.bytes_received": stream.media_bytes,
        "audit.bytes_filled": filled,
        "audit.bytes_to_engine": bridge_fed,
        "audit.bytes_delivered": delivered,
        "audit.bytes_pending": pending,
        "audit.frames_received": stream.media_frames,
        "audit.frames_forwarded": round(delivered / FRAME),
        "audit.frames_dropped": round(sum(dropped.values()) / FRAME),
        "audit.balance": total_in - delivered - sum(dropped.values()) - pending,
    }
    for reason, n in dropped.items():
        if n:
            out[f"audit.bytes_dropped.{reason}"] = n
    return out


class MetricsTally:
    """Pushes a call's counters to Prometheus as deltas since the last push."""

    def __init__(self, engine_name: str = "") -> None:
        self.engine_name = engine_name
        self._last: dict[str, int] = {}

    def push(self, stream: StreamCounters, engine: dict[str, Any]) -> None:
        now = {
            "frames": stream.media_frames,
            "bytes": stream.media_bytes,
            "gaps": stream.gaps,
            "delivered": int(engine.get(BYTES_DELIVERED, 0)),
            "restarts": int(engine.get("restarts", 0)),
        }
        for kind, n in stream.malformed.items():
            now[f"malformed.{kind}"] = n
        dropped = {k.removeprefix(BYTES_DROPPED + "."): int(v) for k, v in engine.items() if k.startswith(BYTES_DROPPED + ".")}
        dropped["late_or_duplicate"] = stream.late_bytes_dropped
        for reason, n in dropped.items():
            now[f"dropped.{reason}"] = n
        delta = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        malformed_frames = 0
        for key, d in delta.items():
            if d <= 0:
                continue
            if key.startswith("malformed."):
                metrics.MALFORMED_MESSAGES.labels(kind=key[10:]).inc(d)
                malformed_frames += d
            elif key.startswith("dropped."):
                metrics.FRAMES_DROPPED.labels(reason=key[8:]).inc(d / FRAME)
        if malformed_frames:
            metrics.FRAMES_DROPPED.labels(reason="malformed").inc(malformed_frames)
        if delta["frames"] > 0 or malformed_frames:
            metrics.FRAMES_RECEIVED.inc(max(delta["frames"], 0) + malformed_frames)
        if delta["bytes"] > 0:
            metrics.BYTES_RECEIVED.inc(delta["bytes"])
        if delta["gaps"] > 0:
            metrics.GAPS_FILLED.inc(delta["gaps"])
        if delta["delivered"] > 0:
            metrics.FRAMES_FORWARDED.inc(delta["delivered"] / FRAME)
            metrics.BYTES_FORWARDED.inc(delta["delivered"])
        if delta["restarts"] > 0:
            metrics.ENGINE_RECONNECTS.labels(engine=self.engine_name or "?").inc(delta["restarts"])
