"""Webhooks for CRMs: signed JSON POSTs of call and transcript events, from a persistent outbox.

:mod:`~callscribe.webhooks.outbox` queues a row per (endpoint, event) in the transaction that stores
the events; :mod:`~callscribe.webhooks.worker` delivers them in order per call, with retries and a
dead letter; :mod:`~callscribe.webhooks.signing` signs and verifies (receivers can copy it).
"""

from __future__ import annotations

from callscribe.webhooks.signing import SIGNATURE_HEADER, sign, verify
from callscribe.webhooks.worker import WebhookWorker

__all__ = ["SIGNATURE_HEADER", "WebhookWorker", "sign", "verify"]
