"""SIGTERM during two live calls, in real processes: both calls' last finals reach the store and the
feed before ``callscribe serve`` exits (one process; and gunicorn with two workers, for the store)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from importlib import resources
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from callscribe.audio.wav import wav_to_ulaw
from callscribe.simulator.messages import CallIds
from callscribe.simulator.runner import simulate_call
from tests.procs import CLI, clean_env, fake_gladia, free_port, wait_http

pytestmark = pytest.mark.slow

DEMO = Path(str(resources.files("callscribe.demo")))
KEY = "drain-test-key"
SIGTERM_AT = 9.5  # s into the calls: mid-utterance ("Let us talk it over…" is 8.7–11.1 s)
DRAIN_DEADLINE = 1.5


async def watch(url: str, seen: list[dict], ready: asyncio.Event) -> None:
    try:
        async with websockets.connect(url) as ws:
            ready.set()
            async for message in ws:
                seen.append(orjson.loads(message))
    except websockets.ConnectionClosed:
        pass


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_two_live_calls(tmp_path: Path, workers: int) -> None:
    port = free_port()
    db = tmp_path / "calls.db"
    caller, agent = wav_to_ulaw(DEMO / "caller.wav"), wav_to_ulaw(DEMO / "agent.wav")
    with fake_gladia(DEMO / "script.json", KEY) as gladia_url:
        env = clean_env(
            GLADIA_API_URL=gladia_url,
            GLADIA_API_KEY=KEY,
            SINKS="[]",
            DATABASE_URL=f"sqlite+aiosqlite:///{db}",
            DRAIN_DEADLINE=str(DRAIN_DEADLINE),
            WORKERS=str(workers),
        )
        log = (tmp_path / "serve.out").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then waits in threads
            [*CLI, "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, signalled as systemd would
        )
        try:
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", proc)
            seen: list[dict] = []
            ready = asyncio.Event()
            watcher = asyncio.create_task(watch(f"ws://127.0.0.1:{port}/live", seen, ready))
            await asyncio.wait_for(ready.wait(), 5)
            sids = [CallIds.new() for _ in range(2)]
            calls = [
                asyncio.create_task(
                    simulate_call(
                        f"ws://127.0.0.1:{port}/media", caller, agent, live=False, ids=ids, drain_timeout=20
                    )
                )
                for ids in sids
            ]
            await asyncio.sleep(SIGTERM_AT)
            async with httpx.AsyncClient() as client:  # summed over the workers' metric files
                scrape = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            active = next(
                s.value
                for f in text_string_to_metric_families(scrape)
                for s in f.samples
                if s.name == "callscribe_active_calls"
            )
            assert active == 2, scrape
            t0 = time.monotonic()
            if workers > 1:  # every process of the group at once, then the master's own forwarding
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 503
            rc = await asyncio.to_thread(proc.wait, 60)
            drain_seconds = time.monotonic() - t0
            await asyncio.gather(*calls, return_exceptions=True)
            await asyncio.wait_for(watcher, 5)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    out = (tmp_path / "serve.out").read_text()
    assert rc == 0, out[-3000:]  # a drained exit is a clean one
    assert "drained in" in out
    print(f"drain with {workers} worker(s): SIGTERM → exit in {drain_seconds:.2f} s")
    assert drain_seconds < DRAIN_DEADLINE + 8 + 5, out[-3000:]

    rows = sqlite3.connect(db).execute("SELECT call_sid, status, end_reason FROM calls").fetchall()
    assert sorted(rows) == sorted((ids.call_sid, "ended", "drained") for ids in sids), out[-3000:]
    for ids in sids:
        stored = [
            (r[0], r[1])
            for r in sqlite3.connect(db).execute(
                "SELECT speaker, text FROM utterances WHERE call_sid = ? ORDER BY start", (ids.call_sid,)
            )
        ]
        if workers > 1:
            # a /live watcher sees only its own worker's calls unless REDIS_URL fans them out; the
            # store is the record that must be complete
            assert stored and ("caller", "Let us talk it over and find a way out.") in stored
            continue
        fed = [
            (e["speaker"], e["text"])
            for e in sorted(seen, key=lambda e: e.get("start", 0))
            if e.get("call_sid") == ids.call_sid and e["type"] == "transcript" and e["is_final"]
        ]
        assert stored == fed, (stored, fed)
        # the utterance in progress at SIGTERM was flushed: its final is there, in both places
        assert ("caller", "Let us talk it over and find a way out.") in stored
        ended = [e for e in seen if e.get("call_sid") == ids.call_sid and e["type"] == "call.ended"]
        assert len(ended) == 1 and ended[0]["reason"] == "drained"
