"""Two real gateway processes sharing Redis: a screen on instance A sees a call handled by instance B."""

from __future__ import annotations

import asyncio
import uuid
from importlib import resources
from pathlib import Path

import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from callscribe.audio.wav import wav_to_ulaw
from callscribe.simulator.runner import simulate_call
from tests.procs import clean_env, fake_gladia, free_port, running

pytestmark = pytest.mark.slow

DEMO = Path(str(resources.files("callscribe.demo")))
REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not redis_up(), reason="no Redis server at 127.0.0.1:6379 (.ci/run starts one)")
def test_live_feed_of_instance_a_shows_calls_handled_by_instance_b(tmp_path: Path) -> None:
    channel = f"callscribe-test:{uuid.uuid4().hex}"
    port_a, port_b = free_port(), free_port()
    with fake_gladia(DEMO / "script.json", "k") as gladia_url:
        env = clean_env(
            GLADIA_API_URL=gladia_url,
            GLADIA_API_KEY="k",
            REDIS_URL=REDIS_URL,
            REDIS_CHANNEL=channel,
            SINKS="[]",
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        )
        with (
            running(
                ["serve", "--port", str(port_a)],
                env,
                f"http://127.0.0.1:{port_a}/healthz",
                log=tmp_path / "a.log",
            ),
            running(
                ["serve", "--port", str(port_b)],
                env,
                f"http://127.0.0.1:{port_b}/healthz",
                log=tmp_path / "b.log",
            ),
        ):
            seen, result = asyncio.run(_watch_a_call_b(port_a, port_b))
    finals_b = [
        (e["speaker"], e["text"])
        for e in (ev.data for ev in result.events)
        if e["type"] == "transcript" and e["is_final"]
    ]
    finals_a = [(e["speaker"], e["text"]) for e in seen if e["type"] == "transcript" and e["is_final"]]
    assert len(finals_b) == 6
    assert finals_a == finals_b  # the same finals, in the same order, seen through the other instance
    assert seen[0]["type"] == "call.started" and seen[-1]["type"] == "call.ended"
    assert {e["call_sid"] for e in seen} == {result.call_sid}


async def _watch_a_call_b(port_a: int, port_b: int):
    seen: list[dict] = []
    async with connect(f"ws://127.0.0.1:{port_a}/live") as watcher:
        result = await simulate_call(
            f"ws://127.0.0.1:{port_b}/media",
            wav_to_ulaw(DEMO / "caller.wav"),
            wav_to_ulaw(DEMO / "agent.wav"),
            realtime=False,
        )
        while not seen or seen[-1]["type"] != "call.ended":
            seen.append(orjson.loads(await asyncio.wait_for(watcher.recv(), timeout=15)))
    return seen, result
