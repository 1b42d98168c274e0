"""Live events across gateway instances through Redis pub/sub.

Each instance publishes the events of the calls it handles to one channel and hands the events of
the other instances to its own :class:`~callscribe.sinks.live.LiveHub`, so a screen connected to
instance A sees calls that instance B handles. Its own events reach its hub directly (no round
trip). Pub/sub is at-most-once: a message lost while Redis is away is not replayed here — finals are
in the shared store, and feed clients resume from it with their last event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import orjson
import redis.asyncio as redis
from prometheus_client import Counter

from callscribe.events import Event, TranscriptEvent, event_to_dict
from callscribe.sinks.base import Sink
from callscribe.sinks.live import LiveHub

log = logging.getLogger(__name__)

PUBLISHED = Counter("callscribe_redis_published_total", "Live events published to Redis")
RECEIVED = Counter("callscribe_redis_received_total", "Live events received from other instances")
FAILURES = Counter("callscribe_redis_failures_total", "Redis publish or subscribe failures", ["op"])


class RedisBus(Sink):
    """A sink that publishes to Redis, plus a subscriber task that feeds remote events to ``hub``."""

    name = "redis"

    def __init__(self, url: str, hub: LiveHub, *, channel: str = "callscribe:events") -> None:
        self.url = url
        self.channel = channel
        self.hub = hub
        self.instance = uuid.uuid4().hex[:12]
        self._redis: redis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._redis = redis.from_url(self.url)
        self._listener = asyncio.create_task(self._listen(), name="redis-listener")
        try:  # start serving even if Redis is down; the listener keeps retrying
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)
        except TimeoutError:
            log.error("Redis at %s not reachable yet; live fan-out across instances is degraded", self.url)

    async def handle(self, event: Event) -> None:
        assert self._redis is not None
        message = orjson.dumps(
            {
                "origin": self.instance,
                "partial": isinstance(event, TranscriptEvent) and not event.is_final,
                "event": event_to_dict(event),
            }
        )
        try:
            await self._redis.publish(self.channel, message)
            PUBLISHED.inc()
        except redis.RedisError as exc:
            FAILURES.labels("publish").inc()
            log.warning(
                "Redis publish of %s for call %s failed: %s", event.type, getattr(event, "call_sid", "?"), exc
            )

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                assert self._redis is not None
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._subscribed.set()
                    delay = 0.2
                    async for message in pubsub.listen():
                        self._deliver(message.get("data"))
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                FAILURES.labels("subscribe").inc()
                log.warning("Redis subscription lost (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _deliver(self, raw: object) -> None:
        if not isinstance(raw, (bytes, str)):
            return
        try:
            message = orjson.loads(raw)
            if message["origin"] == self.instance:
                return
            self.hub.broadcast(message["event"], bool(message["partial"]))
            RECEIVED.inc()
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed message on Redis channel %s: %s", self.channel, exc)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()
