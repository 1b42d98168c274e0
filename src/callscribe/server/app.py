"""The ASGI application: TwiML webhook, Media Streams WebSocket, health; the API, feeds and page.

Routes only move bytes; the call logic lives in :mod:`callscribe.bridge`, a connection's limits in
:mod:`callscribe.server.media`, the protocol in :mod:`callscribe.protocol.twilio`, delivery in
:mod:`callscribe.sinks`; the REST API, the live feeds (``/live``, ``/events``) and the agent's page
(``/``) are routers of their own, behind the tokens of :mod:`callscribe.server.auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from callscribe import __version__
from callscribe.bridge import EngineRouter
from callscribe.config import Settings
from callscribe.events import Event
from callscribe.intelligence.pipeline import Intelligence
from callscribe.observability import metrics
from callscribe.observability.looplag import LoopLagMonitor
from callscribe.observability.tracing import setup_tracing, shutdown_tracing
from callscribe.server import api, api_webhooks, feeds, page
from callscribe.server.auth import install_auth, require
from callscribe.server.media import CLOSE_GOING_AWAY, MediaCall, refuse
from callscribe.server.signature import SignatureChecker, request_facts, websocket_facts
from callscribe.server.twiml import MEDIA_PATH, build_twiml
from callscribe.sinks.base import Sink
from callscribe.sinks.fanout import FanOut
from callscribe.sinks.live import LiveHub

log = logging.getLogger(__name__)

#: Gateways started in this process; ``callscribe serve``'s signal handling drains them.
RUNNING: set[Gateway] = set()


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
        self.intelligence = Intelligence(settings, self.fanout.publish)
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        self.signatures = SignatureChecker(
            token,
            public_url=str(settings.public_url) if settings.public_url else None,
            trusted_proxies=settings.trusted_proxies,
        )
        self.calls: set[MediaCall] = set()
        self._no_calls = asyncio.Event()
        self._no_calls.set()
        self.background: set[asyncio.Future[Any]] = set()
        self.draining = False
        self.started_at = time.time()
        self.loop_lag = LoopLagMonitor()

    def publish(self, event: Event) -> None:
        """Where every call's events enter delivery (synchronous, cheap: the audio path calls it).

        Redaction, triggers and notes come first: no sink, feed or log sees unredacted text.
        """
        self.intelligence.publish(event)

    def add_call(self, call: MediaCall) -> None:
        self.calls.add(call)
        self._no_calls.clear()
        metrics.ACTIVE_CALLS.inc()

    def remove_call(self, call: MediaCall) -> None:
        if call in self.calls:
            self.calls.discard(call)
            metrics.ACTIVE_CALLS.dec()
        if not self.calls:
            self._no_calls.set()

    @property
    def at_capacity(self) -> bool:
        return len(self.calls) >= self.settings.max_calls

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = takes new calls: not draining and below MAX_CALLS.

        A store outage is reported but does not make the instance unready: events are buffered
        (bounded) and written when it comes back, and every instance shares the same store.
        """
        checks: dict[str, Any] = {
            "draining": self.draining,
            "capacity": f"{len(self.calls)}/{self.settings.max_calls}",
        }
        ok = not self.draining and not self.at_capacity
        if self.store is not None:
            checks["store"] = "ok" if self.store.healthy else "unavailable (buffering)"
        return ok, checks

    async def startup(self) -> None:
        if setup_tracing(self.settings.otel_service_name, self.settings.otel_enabled):
            log.info("OpenTelemetry traces on (OTLP exporter)")
        self.loop_lag.start()
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
        RUNNING.add(self)

    async def drain(self, deadline: float | None = None) -> float:
        """Stop taking calls, let open calls go on up to ``deadline`` s, then finish each one.

        Returns the seconds it took. Afterwards every call's last finals are in every sink's hands
        (the store, the live feed, webhooks' outbox), so the server may close connections and exit.
        """
        t0 = time.monotonic()
        deadline = self.settings.drain_deadline if deadline is None else deadline
        if not self.draining:
            self.draining = True
            metrics.DRAINING.set(1)
            log.warning(
                "draining: readiness off, no new calls; %d open call(s) may go on for up to %.0f s",
                len(self.calls),
                deadline,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_calls.wait(), deadline)
        if self.calls:
            log.warning("drain deadline reached: finishing %d call(s)", len(self.calls))
            await asyncio.gather(
                *(c.end("drained", CLOSE_GOING_AWAY) for c in list(self.calls)), return_exceptions=True
            )
        await self.intelligence.flush(timeout=self.settings.drain_timeout)
        await self.fanout.flush(timeout=self.settings.drain_timeout)
        await self.live.flush(timeout=2.0)  # watchers' sockets close right after this
        if self.store is not None:
            try:
                await asyncio.wait_for(self.store.flush(), self.settings.drain_timeout)
            except (TimeoutError, RuntimeError):
                log.error("drain: the store did not commit everything in time (kept in its buffer)")
        took = time.monotonic() - t0
        log.info("drained in %.2f s", took)
        return took

    async def shutdown(self) -> None:
        RUNNING.discard(self)
        if self.calls:
            log.info("waiting for %d call(s) to drain", len(self.calls))
            await asyncio.wait(
                [asyncio.ensure_future(c.end("shutdown", CLOSE_GOING_AWAY)) for c in list(self.calls)],
                timeout=self.settings.drain_timeout + 2,
            )
        await self.intelligence.flush(timeout=self.settings.drain_timeout)
        await self.fanout.close()
        if self._retention is not None:
            self._retention.cancel()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.store is not None:
            await self.store.close()
        for engine in self.engines.engines:
            await engine.shutdown()
        await self.loop_lag.stop()
        shutdown_tracing()


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
    install_auth(app, settings)
    read = [Depends(require("read"))]
    app.include_router(api.router, dependencies=read)
    app.include_router(feeds.router, dependencies=read)
    app.include_router(page.router)  # the page itself holds no data; what it fetches needs a token
    app.include_router(api_webhooks.router, dependencies=read)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    api.unique_operation_ids(app)

    @app.api_route("/twiml", methods=["GET", "POST"], response_class=Response)
    async def twiml(request: Request) -> Response:
        """Twilio's voice webhook: answer with <Start><Stream> to /media and a continuation."""
        facts = await request_facts(request)
        verdict = gw.signatures.check(facts)
        if not verdict:
            metrics.SIGNATURE_REJECTIONS.labels(kind="http").inc()
            log.warning("voice webhook refused from %s: %s", facts.client_ip, verdict.log_text())
            return Response("invalid X-Twilio-Signature\n", status_code=403, media_type="text/plain")
        fields = dict(request.query_params) | {k: v for k, v in (facts.form or [])}
        extra = {k.lower(): fields[k] for k in ("From", "To") if fields.get(k)}
        base = gw.signatures.external_base(facts)
        if gw.draining or gw.at_capacity:
            reason = "draining" if gw.draining else "capacity"
            metrics.CALLS_REFUSED.labels(reason=reason).inc()
            log.warning(
                "voice webhook for %s: %s, answering OVER_CAPACITY=%s",
                fields.get("CallSid", "?"),
                reason,
                settings.over_capacity,
            )
            return Response(build_twiml(settings, base, extra, stream=False), media_type="application/xml")
        return Response(build_twiml(settings, base, extra), media_type="application/xml")

    @app.websocket(MEDIA_PATH)
    async def media(ws: WebSocket) -> None:
        """Twilio Media Streams: one connection per stream."""
        facts = websocket_facts(ws)
        verdict = gw.signatures.check(facts)
        if not verdict:
            metrics.SIGNATURE_REJECTIONS.labels(kind="websocket").inc()
            metrics.CALLS_REFUSED.labels(reason="signature").inc()
            log.warning("media stream refused from %s: %s", facts.client_ip, verdict.log_text())
            await ws.close(code=1008)  # before accept: the handshake gets a 403
            return
        if gw.draining or gw.at_capacity:
            reason = "draining" if gw.draining else "capacity"
            log.warning(
                "media stream from %s refused: %s (%d/%d calls)",
                facts.client_ip,
                reason,
                len(gw.calls),
                settings.max_calls,
            )
            await refuse(ws, reason)
            return
        await ws.accept()
        call = MediaCall(gw, ws)
        gw.add_call(call)
        try:
            await call.run()
        finally:
            gw.remove_call(call)

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
                "max_calls": settings.max_calls,
                "draining": gw.draining,
                "live_watchers": gw.live.watchers,
                "event_loop_lag": gw.loop_lag.snapshot(),
                "sinks": gw.fanout.stats(),
                "signature_check": gw.signatures.enabled,
            }
        )

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 while this instance takes new calls; 503 while draining or full."""
        ok, checks = gw.readiness()
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    if settings.metrics_enabled:
        guard = read if settings.metrics_require_auth else []

        @app.get("/metrics", dependencies=guard, include_in_schema=False)
        async def metrics_route() -> Response:
            """Prometheus exposition (all workers' figures under ``WORKERS`` > 1)."""
            body, content_type = metrics.render_metrics()
            return Response(body, media_type=content_type)

    return app


def build_app(settings: Settings) -> FastAPI:
    """The app as ``callscribe serve`` runs it: engines and sinks from ``settings``."""
    from callscribe.engines import create_engines
    from callscribe.sinks import create_sinks
    from callscribe.storage import Store

    primary, fallback = create_engines(settings)
    store = Store.from_url(settings.database_url, buffer_max=settings.store_buffer_max)
    return create_app(settings, EngineRouter(primary, fallback), create_sinks(settings), store)
