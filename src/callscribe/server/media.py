"""One Media Streams connection under the gateway's limits: admission, message size, idle, duration.

The call logic is :class:`~callscribe.bridge.CallBridge`'s; this module only decides when a
connection may start and when it must end, and ends it cleanly (last finals flushed, socket closed
with a reason). A watchdog per call checks the limits a few times a second, so the per-message path
costs one length comparison.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from callscribe.bridge import CallBridge
from callscribe.observability import metrics

if TYPE_CHECKING:
    from callscribe.server.app import Gateway

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # draining: the server is going down
CLOSE_TRY_AGAIN_LATER = 1013  # at capacity: come back later


class MediaCall:
    """A live Media Streams connection: its bridge, its socket and its limits."""

    def __init__(self, gw: Gateway, ws: WebSocket) -> None:
        self.gw = gw
        self.ws = ws
        self.settings = gw.settings
        self.bridge = CallBridge(
            gw.engines,
            gw.publish,
            speakers=self.settings.speakers,
            drain_timeout=self.settings.drain_timeout,
        )
        self.started = time.monotonic()
        self.ended_by: str | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def call_sid(self) -> str:
        return self.bridge.call_sid

    async def run(self) -> None:
        """Read messages until the socket closes or a limit ends the call; then drain."""
        max_bytes = self.settings.ws_max_message_bytes
        bridge, ws = self.bridge, self.ws
        self._watchdog = asyncio.create_task(self._watch(), name="media-watchdog")
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > max_bytes:
                    bridge.reject("oversize", f"{len(data)}-byte message > WS_MAX_MESSAGE_BYTES={max_bytes}")
                    continue
                bridge.receive(data)
                if bridge.refused:
                    metrics.CALLS_REFUSED.labels(reason="engine").inc()
                    await self._close(CLOSE_TRY_AGAIN_LATER, "callscribe at capacity")
                    break
        finally:
            self._watchdog.cancel()
            await bridge.close()
            await self._close(CLOSE_NORMAL, self.ended_by or "")

    async def end(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """End the call now (a limit, or the drain): flush its last finals, then close the socket."""
        if self.ended_by is not None:
            return
        self.ended_by = reason
        log.info("call %s: ending (%s)", self.call_sid or "?", reason)
        self.bridge.end(reason)
        await self.bridge.close()
        await self._close(code, reason.replace("_", " "))

    async def _watch(self) -> None:
        idle, longest = self.settings.idle_timeout, self.settings.max_call_duration
        tick = min(1.0, idle / 4, longest / 4)
        seen, quiet_since = -1, time.monotonic()
        while self.ended_by is None:
            await asyncio.sleep(tick)
            self.bridge.push_metrics()
            now = time.monotonic()
            frames = self.bridge.stream.counters.media_frames
            if frames != seen:
                seen, quiet_since = frames, now
            if now - quiet_since >= idle and self.bridge.started:
                self._spawn(self.end("idle_timeout"))
                return
            if now - self.started >= longest:
                self._spawn(self.end("max_duration"))
                return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # end() closes the socket, which ends run(), which cancels this watchdog: run end() apart.
        task = asyncio.ensure_future(coro)
        self.gw.background.add(task)
        task.add_done_callback(self.gw.background.discard)

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.application_state is WebSocketState.CONNECTED:
            with suppress(Exception):
                await self.ws.close(code=code, reason=reason[:120])


async def refuse(ws: WebSocket, reason: str) -> None:
    """Accept, then close with 1013 and ``reason``: Twilio logs the reason; a 403 would say nothing."""
    metrics.CALLS_REFUSED.labels(reason=reason).inc()
    await ws.accept()
    await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason=f"callscribe {reason.replace('_', ' ')}")
