"""``callscribe`` command line: serve, config, twiml, fake-gladia, simulate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from callscribe import __version__
from callscribe.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(args.env_file, **{k: v for k, v in overrides.items() if v is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args, http_host=args.host, http_port=args.port, engine=args.engine, workers=args.workers
    )
    if settings.workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before anything imports prometheus_client: the workers' metrics go to shared files (a
        # preset directory is emptied even for one worker: it may hold a previous container's)
        from callscribe.server.serving import prepare_metrics_dir

        prepare_metrics_dir()
    from callscribe.logs import setup_logging
    from callscribe.server import serving

    setup_logging(settings.log_level, settings.log_format, redact=settings.redact)
    base = (
        str(settings.public_url).rstrip("/")
        if settings.public_url
        else f"http://{settings.http_host}:{settings.http_port}"
    )
    print(
        f"callscribe {__version__}: engine {settings.resolved_engine}, {settings.workers} worker(s), "
        f"voice webhook {base}/twiml, live feed {base.replace('http', 'ws', 1)}/live",
        file=sys.stderr,
    )
    if settings.workers > 1:
        if not settings.redis_url:
            logging.getLogger("callscribe").warning(
                "WORKERS=%d without REDIS_URL: each worker's /live and /events show only its own calls",
                settings.workers,
            )
        serving.serve_workers(settings, args.env_file)
    else:
        from callscribe.server.app import build_app

        serving.serve_single(build_app(settings), settings)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    shown = settings.masked()
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
    else:
        width = max(map(len, shown))
        for name, value in shown.items():
            print(f"{name:<{width}}  {value}")
    return 0


def cmd_twiml(args: argparse.Namespace) -> int:
    from callscribe.server.twiml import build_twiml

    settings = _settings(args)
    base = args.url or (str(settings.public_url) if settings.public_url else None)
    if not base:
        raise ConfigError("PUBLIC_URL: needed to print TwiML (or pass --url https://your.host)")
    print(build_twiml(settings, base.rstrip("/")))
    return 0


def _mount(sub: argparse._SubParsersAction, name: str, help_: str, module: str) -> None:
    """A subcommand whose arguments and runner live in ``module`` (``add_arguments``/``run``)."""
    import importlib

    mod = importlib.import_module(module)
    parser = sub.add_parser(name, help=help_, description=help_)
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callscribe", description="Live transcription for phone calls.")
    parser.add_argument("--version", action="version", version=f"callscribe {__version__}")
    parser.add_argument(
        "--env-file", default=".env", help="settings file read before the environment (default .env)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (TwiML webhook, /media, /live)")
    serve.add_argument("--host", help="interface (HTTP_HOST)")
    serve.add_argument("--port", type=int, help="port (HTTP_PORT)")
    serve.add_argument("--engine", choices=["auto", "local", "gladia"], help="engine (ENGINE)")
    serve.add_argument("--workers", type=int, help="worker processes (WORKERS; >1 runs gunicorn)")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="print the effective configuration, secrets masked")
    config.add_argument("--json", action="store_true")
    config.set_defaults(func=cmd_config)

    twiml = sub.add_parser("twiml", help="print the TwiML to paste into a TwiML Bin")
    twiml.add_argument("--url", help="public https base URL (default PUBLIC_URL)")
    twiml.set_defaults(func=cmd_twiml)

    _mount(
        sub, "demo", "run the gateway and a simulated two-speaker call through it", "callscribe.demo.command"
    )
    _mount(
        sub, "fake-gladia", "run a fake Gladia live v2 server for tests and demos", "callscribe.fakes.gladia"
    )
    _mount(
        sub,
        "simulate",
        "stream WAV files to the gateway exactly as Twilio would",
        "callscribe.simulator.command",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"callscribe: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
