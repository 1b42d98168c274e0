"""Webhook signatures, Stripe-style: ``Callscribe-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is HMAC-SHA256, keyed with ``WEBHOOK_SECRET``, over ``f"{t}.{body}"``. Signing the timestamp
with the body lets a receiver refuse replays of an old, validly signed request. This module uses
only the standard library so receivers can copy :func:`verify` as is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Callscribe-Signature"
DEFAULT_TOLERANCE = 300  # seconds a signature stays acceptable (Stripe's default)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def compute(secret: str | bytes, timestamp: int, body: str | bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` under ``secret``."""
    payload = f"{timestamp}.".encode() + _as_bytes(body)
    return hmac.new(_as_bytes(secret), payload, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: str | bytes, timestamp: int | None = None) -> str:
    """The ``Callscribe-Signature`` header value for ``body`` sent at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute(secret, t, body)}"


def verify(
    secret: str | bytes,
    header: str | None,
    body: str | bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when ``header`` carries a ``v1`` signature of ``body`` under ``secret`` made within
    ``tolerance`` seconds of ``now``. ``body`` must be the raw request body, not re-serialised JSON.
    Several ``v1`` entries are accepted (any may match), so a sender can roll its secret.
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False  # too old (a replay) or from a badly skewed clock
    expected = compute(secret, timestamp, body)
    # compare_digest: a plain == leaks, through timing, how many leading characters matched
    return any(hmac.compare_digest(expected, c) for c in candidates)
