"""``callscribe demo``: the gateway and a simulated two-speaker call in one process, no phone, no key.

Starts the real ASGI app on a free loopback port (engine from the settings: the embedded one unless
GLADIA_API_KEY is set), then streams the bundled conversation to it exactly as Twilio would, in
real time, and shows the live transcript and the latency report.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from importlib import resources
from pathlib import Path

import uvicorn

from callscribe.audio.wav import wav_to_ulaw
from callscribe.config import load_settings
from callscribe.logs import setup_logging
from callscribe.simulator.display import Display
from callscribe.simulator.report import format_report
from callscribe.simulator.runner import simulate_call

DEMO = resources.files("callscribe.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["auto", "local", "gladia"], help="engine (ENGINE)")
    parser.add_argument("--caller", type=Path, help="caller WAV (default: the bundled conversation)")
    parser.add_argument("--agent", type=Path, help="agent WAV (default: the bundled conversation)")
    parser.add_argument("--fast", action="store_true", help="stream faster than real time")
    parser.add_argument("--quiet", action="store_true", help="print only the latency report")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _demo(args: argparse.Namespace) -> int:
    # imported here: `callscribe serve --workers N` builds its parser from this module and must not
    # import prometheus_client before it has chosen multiprocess mode
    from callscribe.server.app import build_app

    settings = load_settings(
        args.env_file,
        **({"engine": args.engine} if args.engine else {}),
        sinks=[],
        http_host="127.0.0.1",
        http_port=_free_port(),
        public_url=None,
    )
    setup_logging("warning")
    caller = wav_to_ulaw(args.caller or DEMO.joinpath("caller.wav"))
    agent = wav_to_ulaw(args.agent or DEMO.joinpath("agent.wav"))
    print(
        f"callscribe demo: engine {settings.resolved_engine}; loading it and starting the gateway…",
        file=sys.stderr,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            lifespan="on",
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # startup failed: raise its error
            return 1
        await asyncio.sleep(0.05)
    url = f"ws://{settings.http_host}:{settings.http_port}/media"
    print(
        f"gateway up at {url}; streaming a {len(caller) / 8000:.0f}-second call (caller + agent)…",
        file=sys.stderr,
    )
    try:
        with Display(quiet=args.quiet) as display:
            result = await simulate_call(
                url,
                caller,
                agent,
                realtime=not args.fast,
                on_event=display.event,
                on_progress=display.progress,
            )
        print(format_report(result.report))
        return 0 if result.ended and not result.error else 1
    finally:
        server.should_exit = True
        await serving


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the call was transcribed end to end."""
    return asyncio.run(_demo(args))
