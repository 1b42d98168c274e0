"""Running the gateway: one uvicorn process, or gunicorn with uvicorn workers, both draining on SIGTERM.

uvicorn's own shutdown closes every WebSocket at once (close 1012), which would cut calls off
mid-sentence. So the first SIGTERM (or SIGINT) goes to the gateway first: readiness turns false,
no new calls are taken, open calls go on up to ``DRAIN_DEADLINE`` and are then finished with their
last finals delivered; only then does the server shut down as usual. A second SIGINT forces exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.workers import UvicornWorker

from callscribe.config import Settings

log = logging.getLogger(__name__)

#: Room for a WebSocket message above WS_MAX_MESSAGE_BYTES: larger ones are refused by the app
#: (counted, the call goes on); only far larger ones make uvicorn close the socket (1009).
HARD_MESSAGE_FACTOR = 4


async def drain_all(deadline: float | None) -> None:
    """Drain every gateway of this process (see :meth:`callscribe.server.app.Gateway.drain`)."""
    from callscribe.server.app import RUNNING

    await asyncio.gather(*(gw.drain(deadline) for gw in list(RUNNING)), return_exceptions=True)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the gateway before shutting down."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Future[None] | None = None
        self._draining = False

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None and not self.should_exit:
            if self._draining:
                if sig == signal.SIGINT:  # a second Ctrl-C: stop now
                    super().handle_exit(sig, frame)
                # a second SIGTERM (systemd signals every process of the unit, gunicorn's arbiter
                # forwards its own) must not cut the drain short
                return
            self._draining = True
            # SIGINT (a developer's Ctrl-C) finishes calls at once; SIGTERM lets them run on a while.
            deadline = 0.0 if sig == signal.SIGINT else None
            self._loop.call_soon_threadsafe(self._start_drain, deadline)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self, deadline: float | None) -> None:
        if self._drain is not None:
            return
        self._drain = asyncio.ensure_future(drain_all(deadline))
        # then the usual shutdown, without re-raising the signal afterwards: a drained exit is a clean 0
        self._drain.add_done_callback(lambda _: setattr(self, "should_exit", True))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What every worker runs with, single-process or under gunicorn."""
    return {
        "ws_max_size": settings.ws_max_message_bytes * HARD_MESSAGE_FACTOR,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        # X-Forwarded-* are read only from TRUSTED_PROXIES, by the signature check; never by uvicorn
        "proxy_headers": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.drain_timeout + 5,
    }


def serve_single(app: Any, settings: Settings) -> None:
    """One process: uvicorn, with the drain on SIGTERM."""
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level,
        log_config=None,  # our logging set-up (text or JSON) applies to uvicorn's loggers too
        **uvicorn_options(settings),
    )
    DrainingServer(config).run()


class DrainingWorker(UvicornWorker):
    """gunicorn's uvicorn worker, running :class:`DrainingServer` and our uvicorn options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from callscribe.config import load_settings

        settings = load_settings()
        self.CONFIG_KWARGS = {"loop": "auto", "http": "auto", **uvicorn_options(settings)}
        super().__init__(*args, **kwargs)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR


def prepare_metrics_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR for several workers: set before any worker imports prometheus_client."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="callscribe-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):  # a previous run's figures would be summed in
        stale.unlink()
    return path


def serve_workers(settings: Settings, env_file: str | None) -> None:
    """Several processes: gunicorn's arbiter with :class:`DrainingWorker` workers."""
    from gunicorn.app.base import BaseApplication

    prepare_metrics_dir()
    if env_file:
        os.environ.setdefault("CALLSCRIBE_ENV_FILE", env_file)
    # The workers read settings from the environment; make the command line's overrides visible.
    os.environ["HTTP_HOST"], os.environ["HTTP_PORT"] = settings.http_host, str(settings.http_port)
    os.environ["ENGINE"] = str(settings.engine)

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    options = {
        "bind": f"{settings.http_host}:{settings.http_port}",
        "workers": settings.workers,
        "worker_class": "callscribe.server.serving.DrainingWorker",
        # the arbiter's SIGTERM → each worker drains; it is killed only after this
        "graceful_timeout": int(settings.drain_deadline + settings.drain_timeout + 10),
        "timeout": 60,
        "keepalive": 5,
        "child_exit": child_exit,
        "accesslog": None,
        "loglevel": settings.log_level,
    }

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from callscribe.server.asgi import app

            return app

    _App().run()
