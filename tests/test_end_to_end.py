"""End to end in real processes: ``callscribe fake-gladia`` + ``callscribe serve`` + ``callscribe simulate``.

The bundled conversation (real speech from the evaluation corpus, both tracks) goes through the
gateway to the fake Gladia, whose script says what was spoken; the scripted transcripts must come
back on the gateway's console sink and on /live (as the simulator prints them), in order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import orjson
import pytest

pytestmark = pytest.mark.slow

DEMO = Path(str(resources.files("callscribe.demo")))
SCRIPT = json.loads((DEMO / "script.json").read_text())
KEY = "e2e-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    fake_port, gw_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLADIA_", "TWILIO_"))}
    cli = [sys.executable, "-m", "callscribe", "--env-file", "/dev/null"]
    fake = subprocess.Popen(
        [
            *cli,
            "fake-gladia",
            "--port",
            str(fake_port),
            "--api-key",
            KEY,
            "--script",
            str(DEMO / "script.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    console = tmp_path / "serve.out"
    gw_env = env | {
        "GLADIA_API_URL": f"http://127.0.0.1:{fake_port}",
        "GLADIA_API_KEY": KEY,
        "SINKS": '["console","jsonl"]',
        "JSONL_PATH": str(tmp_path / "events.jsonl"),
    }
    with console.open("wb") as out:
        gateway = subprocess.Popen(
            [*cli, "serve", "--port", str(gw_port)], stdout=out, stderr=subprocess.STDOUT, env=gw_env
        )
    try:
        wait_http(f"http://127.0.0.1:{fake_port}/v2/live/none", fake)
        wait_http(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        yield gw_port, tmp_path
    finally:
        for proc in (gateway, fake):
            proc.terminate()
            proc.wait(timeout=15)


def test_simulated_call_through_real_processes(processes: tuple[int, Path]) -> None:
    port, tmp = processes
    report = tmp / "report.json"
    sim = subprocess.run(
        [
            sys.executable,
            "-m",
            "callscribe",
            "--env-file",
            "/dev/null",
            "simulate",
            str(DEMO / "caller.wav"),
            str(DEMO / "agent.wav"),
            "--url",
            f"ws://127.0.0.1:{port}/media",
            "--json",  # real-time pacing, as Twilio
            "--report-json",
            str(report),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert sim.returncode == 0, sim.stderr.decode()
    expected = sorted(((line["start"], ch, line["text"]) for ch, lines in SCRIPT.items() for line in lines))
    speaker = {"0": "caller", "1": "agent"}
    want = [(speaker[ch], text) for _, ch, text in expected]

    # on /live, as the simulator received them
    events = [orjson.loads(line) for line in sim.stdout.splitlines()]
    finals = [(e["speaker"], e["text"]) for e in events if e["type"] == "transcript" and e["is_final"]]
    assert finals == want
    assert events[0]["type"] == "call.started" and events[-1]["type"] == "call.ended"
    assert any(e["type"] == "transcript" and not e["is_final"] for e in events)
    counters = events[-1]["counters"]
    assert counters["engine.bytes_sent"] == counters["engine.bytes_fed"] == counters["media_bytes"]

    # on the gateway's console sink, in the same order
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        console = (tmp / "serve.out").read_text()
        if "ended" in console:
            break
        time.sleep(0.1)
    lines = [ln for ln in console.splitlines() if ln.startswith("📝 Transcript")]
    assert lines == [f"📝 Transcript [{who}]: {text}" for who, text in want]
    summary = orjson.loads(report.read_bytes())
    assert summary["latency"]["overall"]["count"] == len(want)
