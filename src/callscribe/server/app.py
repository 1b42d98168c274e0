"""The ASGI application: TwiML webhook, Media Streams WebSocket, health; the API, feeds and page.

Routes only move bytes; the call logic lives in :mod:`callscribe.bridge`, the protocol in
:mod:`callscribe.protocol.twilio`, delivery in :mod:`callscribe.sinks`; the REST API, the live feeds
(``/live``, ``/events``) and the agent's page (``/``) are routers of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from callscribe import __version__
from callscribe.bridge import CallBridge, EngineRouter
from callscribe.config import Settings
from callscribe.server import api, api_webhooks, feeds, page
from callscribe.server.signature import SignatureChecker
from callscribe.server.twiml import MEDIA_PATH, build_twiml, stream_url
from callscribe.sinks.base import Sink
from callscribe.sinks.fanout import FanOut
from callscribe.sinks.live import LiveHub

log = logging.getLogger(__name__)

# WebSocket close codes we send.
CLOSE_TRY_AGAIN_LATER = 1013  # at capacity / too slow: come back later
CLOSE_POLICY_VIOLATION = 1008


class Gateway:
    """Everything the routes share: settings, engines, sinks, the calls in progress."""

    def __init__(
        self, settings: Settings, engines: EngineRouter, sinks: list[Sink], store: Any = None
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.store = store  # callscribe.storage.Store, when storage is on
        self.live = LiveHub()
        self.webhooks: Any = None
        self._retention: asyncio.Task[None] | None = None
        fanned: list[Sink] = [*sinks, self.live]
        if store is not None:
            from callscribe.sinks.store import StoreSink

            fanned.append(StoreSink(store))
            if settings.webhook_urls:  # registers its outbox hook on the store: before events flow
                from callscribe.webhooks import WebhookWorker

                self.webhooks = WebhookWorker(store, settings)
        if settings.redis_url:  # other instances' screens see this instance's calls, and back
            from callscribe.sinks.redis_bus import RedisBus

            fanned.append(RedisBus(settings.redis_url, self.live, channel=settings.redis_channel))
        self.fanout = FanOut(fanned)
        self.signatures = SignatureChecker(
            settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        )
        self.calls: set[CallBridge] = set()
        self.started_at = time.time()

    async def startup(self) -> None:
        if not self.signatures.enabled:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: X-Twilio-Signature is NOT checked; anyone who can "
                "reach this server can stream audio to it"
            )
        for engine in self.engines.engines:
            await engine.startup()
        if self.store is not None:
            await self.store.start()
            if self.webhooks is not None:
                await self.webhooks.start()
            if self.settings.retention_days:
                from callscribe.server.retention import retention_loop

                self._retention = asyncio.create_task(
                    retention_loop(self.store, self.settings.retention_days)
                )
        await self.fanout.start()

    async def shutdown(self) -> None:
        if self.calls:
            log.info("waiting for %d call(s) to drain", len(self.calls))
            await asyncio.wait(
                [asyncio.create_task(c.close()) for c in list(self.calls)],
                timeout=self.settings.drain_timeout + 2,
            )
        await self.fanout.close()
        if self._retention is not None:
            self._retention.cancel()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.store is not None:
            await self.store.close()
        for engine in self.engines.engines:
            await engine.shutdown()

    def public_base(self, fallback: str) -> str:
        return str(self.settings.public_url).rstrip("/") if self.settings.public_url else fallback.rstrip("/")


def create_app(settings: Settings, engines: EngineRouter, sinks: list[Sink], store: Any = None) -> FastAPI:
    """The gateway as an ASGI app; engines, sinks and the store are started in its lifespan."""
    gw = Gateway(settings, engines, sinks, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    app = FastAPI(title="callscribe", version=__version__, lifespan=lifespan)
    app.state.gateway = gw
    app.include_router(api.router)
    app.include_router(feeds.router)
    app.include_router(page.router)
    app.include_router(api_webhooks.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    api.unique_operation_ids(app)

    @app.api_route("/twiml", methods=["GET", "POST"], response_class=Response)
    async def twiml(request: Request) -> Response:
        """Twilio's voice webhook: answer with <Start><Stream> to /media and a continuation."""
        params = dict(request.query_params)
        form: dict[str, str] = {}
        if request.method == "POST":
            form = {k: str(v) for k, v in (await request.form()).items()}
        base = gw.public_base(str(request.base_url))
        signed_url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not gw.signatures.valid(signed_url, form, request.headers.get("x-twilio-signature")):
            log.warning("voice webhook refused: bad X-Twilio-Signature for %s", signed_url)
            return Response("invalid X-Twilio-Signature\n", status_code=403, media_type="text/plain")
        fields = params | form
        extra = {k.lower(): fields[k] for k in ("From", "To") if fields.get(k)}
        return Response(build_twiml(settings, base, extra), media_type="application/xml")

    @app.websocket(MEDIA_PATH)
    async def media(ws: WebSocket) -> None:
        """Twilio Media Streams: one connection per stream."""
        signed_url = stream_url(gw.public_base(f"{ws.url.scheme}://{ws.url.netloc}"))
        if not gw.signatures.valid(signed_url, None, ws.headers.get("x-twilio-signature")):
            log.warning("media stream refused: bad X-Twilio-Signature for %s from %s", signed_url, ws.client)
            await ws.close(code=CLOSE_POLICY_VIOLATION)  # before accept: the handshake gets a 403
            return
        await ws.accept()
        bridge = CallBridge(
            gw.engines, gw.fanout.publish, speakers=settings.speakers, drain_timeout=settings.drain_timeout
        )
        gw.calls.add(bridge)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                bridge.receive(text if text is not None else message.get("bytes") or b"")
                if bridge.refused:
                    await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="callscribe at capacity")
                    break
        finally:
            await bridge.close()
            gw.calls.discard(bridge)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: the process answers, with what it is doing."""
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.time() - gw.started_at, 1),
                "engines": [e.describe() for e in gw.engines.engines],
                "active_calls": len(gw.calls),
                "live_watchers": gw.live.watchers,
                "sinks": gw.fanout.stats(),
                "signature_check": gw.signatures.enabled,
            }
        )

    return app


def build_app(settings: Settings) -> FastAPI:
    """The app as ``callscribe serve`` runs it: engines and sinks from ``settings``."""
    from callscribe.engines import create_engines
    from callscribe.sinks import create_sinks
    from callscribe.storage import Store

    primary, fallback = create_engines(settings)
    store = Store.from_url(settings.database_url, buffer_max=settings.store_buffer_max)
    return create_app(settings, EngineRouter(primary, fallback), create_sinks(settings), store)
