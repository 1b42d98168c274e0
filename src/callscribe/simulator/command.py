"""The ``callscribe simulate`` subcommand: arguments and entry point (mounted by ``callscribe.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import wave
from collections.abc import Sequence
from pathlib import Path

import orjson

from callscribe.audio.wav import wav_to_ulaw
from callscribe.events import Track
from callscribe.simulator.display import Display
from callscribe.simulator.report import format_report
from callscribe.simulator.runner import SimulatorError, simulate_call

DEFAULT_URL = "ws://127.0.0.1:5000/media"
_TRACK_NAMES = {
    "inbound": Track.INBOUND,
    "caller": Track.INBOUND,
    "outbound": Track.OUTBOUND,
    "agent": Track.OUTBOUND,
}


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, value


def _frame_list(text: str) -> list[tuple[Track | None, int]]:
    """``3,7-9,agent:12`` → (track or None for both, frame index) pairs."""
    out: list[tuple[Track | None, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, spec = item.rpartition(":")
        track = _TRACK_NAMES.get(name) if name else None
        if name and track is None:
            raise argparse.ArgumentTypeError(f"unknown track {name!r} in {item!r} (caller/agent)")
        lo, _, hi = spec.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N, N-M or TRACK:N, got {item!r}") from None
        out.extend((track, i) for i in range(first, last + 1))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``simulate``'s arguments to ``parser``."""
    parser.add_argument("caller", type=Path, help="WAV for the caller (inbound track)")
    parser.add_argument("agent", type=Path, nargs="?", help="WAV for the agent (outbound track)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Media Streams endpoint (default {DEFAULT_URL})")
    parser.add_argument(
        "--live-url",
        help="events socket; '{call_sid}' is filled in (default: --url with /media → /live/<callSid>)",
    )
    parser.add_argument(
        "--no-live", dest="live", action="store_false", help="do not read /live (no transcripts, no latency)"
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="sign the handshake with X-Twilio-Signature (default: $TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument("--signature-url", help="URL to sign (default: --url), e.g. the public wss:// URL")
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a <Parameter> in start.customParameters (repeatable)",
    )
    parser.add_argument("--fast", action="store_true", help="send as fast as possible, not in real time")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction of frames to drop at random")
    parser.add_argument(
        "--drop-frames",
        type=_frame_list,
        action="append",
        default=[],
        metavar="LIST",
        help="frame indices to drop, e.g. 10,20-25,agent:7 (no track: both)",
    )
    parser.add_argument("--seed", type=int, help="random seed for --drop-rate")
    parser.add_argument(
        "--agent-delay", type=float, default=0.0, metavar="SECONDS", help="start the agent track late"
    )
    parser.add_argument(
        "--no-pad", dest="pad", action="store_false", help="end the shorter track early instead of padding"
    )
    parser.add_argument("--no-stop", dest="send_stop", action="store_false", help="close without 'stop'")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for call.ended after the audio (default 15)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the latency report")
    parser.add_argument("--json", action="store_true", help="print received events as JSON lines")
    parser.add_argument("--report-json", type=Path, metavar="FILE", help="write the report as JSON")


def _load(path: Path) -> bytes:
    try:
        return wav_to_ulaw(path)
    except (OSError, EOFError, wave.Error, ValueError) as e:
        raise SimulatorError(f"cannot read {path}: {e}") from None


def _dropped(
    lists: Sequence[list[tuple[Track | None, int]]], tracks: Sequence[Track]
) -> dict[Track, set[int]]:
    out: dict[Track, set[int]] = {t: set() for t in tracks}
    for track, index in (pair for items in lists for pair in items):
        for t in [track] if track else tracks:
            out.setdefault(t, set()).add(index)
    return out


async def _main(args: argparse.Namespace) -> int:
    caller = _load(args.caller)
    agent = _load(args.agent) if args.agent else None
    tracks = [Track.INBOUND] if agent is None else [Track.INBOUND, Track.OUTBOUND]
    # With --json stdout carries only events; everything else goes to stderr.
    report_out = sys.stderr if args.json else sys.stdout
    with Display(quiet=args.quiet, json_lines=args.json) as display:
        result = await simulate_call(
            args.url,
            caller,
            agent,
            realtime=not args.fast,
            live=args.live,
            live_url=args.live_url,
            auth_token=args.auth_token,
            signature_url=args.signature_url,
            params=dict(args.param),
            on_event=display.event,
            on_progress=display.progress,
            drop_rate=args.drop_rate,
            dropped=_dropped(args.drop_frames, tracks),
            seed=args.seed,
            agent_delay=args.agent_delay,
            pad=args.pad,
            send_stop=args.send_stop,
            drain_timeout=args.drain_timeout,
        )
    frames = ", ".join(f"{track} {n}" for track, n in result.frames_sent.items())
    print(
        f"call {result.call_sid}: {result.audio_seconds:.1f} s audio, frames sent: {frames}", file=report_out
    )
    if args.live:
        print(format_report(result.report), file=report_out)
    if args.report_json:
        args.report_json.write_bytes(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2))
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    if args.live and not result.ended:
        print(f"error: no call.ended for {result.call_sid} within {args.drain_timeout:g} s", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``callscribe simulate``; 0 on success, 1 with a one-line message on stderr otherwise."""
    try:
        return asyncio.run(_main(args))
    except SimulatorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m callscribe.simulator.command``)."""
    parser = argparse.ArgumentParser(prog="callscribe simulate", description="Simulate a Twilio call.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
