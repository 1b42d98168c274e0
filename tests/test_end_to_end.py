"""End to end in real processes: ``callscribe fake-gladia`` + ``callscribe serve`` + ``callscribe simulate``.

The bundled conversation (real speech from the evaluation corpus, both tracks) goes through the
gateway to the fake Gladia, whose script says what was spoken; the scripted transcripts must come
back on the gateway's console sink and on /live (as the simulator prints them), in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import orjson
import pytest

from tests.procs import clean_env, fake_gladia, free_port, running

pytestmark = pytest.mark.slow

DEMO = Path(str(resources.files("callscribe.demo")))
SCRIPT = json.loads((DEMO / "script.json").read_text())
KEY = "e2e-test-key"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    with fake_gladia(DEMO / "script.json", KEY) as gladia_url:
        env = clean_env(
            GLADIA_API_URL=gladia_url,
            GLADIA_API_KEY=KEY,
            SINKS='["console","jsonl"]',
            JSONL_PATH=str(tmp_path / "events.jsonl"),
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}",
        )
        args = ["serve", "--port", str(port)]
        with running(args, env, f"http://127.0.0.1:{port}/healthz", log=tmp_path / "serve.out"):
            yield port, tmp_path


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
