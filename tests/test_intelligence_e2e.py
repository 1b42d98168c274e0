"""Redaction, triggers and notes through the real gateway: a card number read across partials and two
finals never reaches a sink, a feed, a webhook or a log unmasked; the trigger fires on a partial;
the call's notes land in the store, the API and the ``call.ended`` webhook."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import Path

import httpx
import orjson
import websockets

from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.engines.base import Engine, EngineSession
from callscribe.events import CallInfo, Track, TranscriptEvent
from callscribe.server.app import create_app
from callscribe.sinks.console import ConsoleSink
from callscribe.sinks.jsonl import JsonLinesSink
from callscribe.storage import Store
from tests import twilio_frames as tw
from tests.asgi_server import serving
from tests.test_webhooks import Receiver

CARD = "4539 1488 0343 6467"  # Luhn-valid; every group differs, so any leak is recognisable
LEAKS = ("4539", "1488", "0343")  # only the last four may ever be shown
RULES = """
[[rule]]
id = "card-payment"
phrases = ["card number"]
severity = "warning"
[rule.payload]
script = "Remind the caller this line is secure."
"""

# (bytes of caller audio after which it is emitted, utterance, final?, text, start, end)
SCRIPT = [
    (1600, "u1", False, "I'd like to pay", 0.0, 0.6),
    (3200, "u1", False, "I'd like to pay my card number is", 0.0, 1.4),
    (4800, "u1", False, "I'd like to pay my card number is 4539 1488", 0.0, 2.2),
    (6400, "u1", True, "I'd like to pay, my card number is 4539 1488.", 0.0, 2.6),
    (8000, "u2", False, "0343", 2.9, 3.3),
    (9600, "u2", False, "0343 6467", 2.9, 3.8),
    (11200, "u2", True, "0343 6467.", 2.9, 4.0),
]
AGENT = [(4000, "a1", True, "Thank you, one moment please.", 0.2, 1.8)]


class ScriptSession(EngineSession):
    def __init__(self, call: CallInfo) -> None:
        super().__init__(call)
        self.fed = dict.fromkeys(Track, 0)
        self.todo = {Track.INBOUND: list(SCRIPT), Track.OUTBOUND: list(AGENT)}

    async def start(self) -> None:
        pass

    def feed(self, track: Track, audio: bytes) -> None:
        self.fed[track] += len(audio)
        while self.todo[track] and self.todo[track][0][0] <= self.fed[track]:
            _, uid, final, text, start, end = self.todo[track].pop(0)
            self._emit(
                TranscriptEvent(
                    self.call.call_sid, self.call.stream_sid, track, self.call.speaker(track),
                    uid, text, final, start, end, engine="script",
                )
            )

    async def finish(self, timeout: float) -> None:
        self._close_events()

    @property
    def counters(self) -> dict[str, int]:
        fed = sum(self.fed.values())
        return {"bytes_fed": fed, "bytes_delivered": fed, "bytes_dropped": 0, "bytes_pending": 0}


class ScriptEngine(Engine):
    name = "script"

    def open(self, call: CallInfo) -> ScriptSession:
        return ScriptSession(call)


def assert_masked(blob: str, where: str) -> None:
    digits = re.sub(r"(?<=\d)[\s.,-]+(?=\d)", "", blob)  # "4539 1488" and "4539-1488" leak alike
    for group in LEAKS:
        assert group not in digits, f"{group} reached {where}: {blob[:2000]}"


async def test_card_number_is_masked_everywhere_and_the_trigger_fires_on_a_partial(
    tmp_path: Path, caplog
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    receiver = Receiver(hang=1.0)
    console = io.StringIO()
    caplog.set_level(logging.DEBUG)
    async with serving(receiver) as hook:
        settings = load_settings(
            None, triggers_path=str(rules), webhook_urls=[f"http://{hook}/crm"], webhook_secret="k" * 32
        )
        store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}", batch_delay=0.01)
        sinks = [ConsoleSink(console, partials=True), JsonLinesSink(str(tmp_path / "events.jsonl"))]
        app = create_app(settings, EngineRouter(ScriptEngine()), sinks, store)
        async with serving(app) as hostport:
            live_msgs: list[str] = []
            async with websockets.connect(f"ws://{hostport}/live") as live:
                async with websockets.connect(f"ws://{hostport}/media") as media:
                    await media.send(tw.connected())
                    await media.send(tw.start(call_sid="CAcard"))
                    for i in range(70):  # 1.4 s of both tracks; the script keys on bytes received
                        await media.send(tw.media("inbound", i, bytes([0xFF]) * 160, 2 + 2 * i))
                        await media.send(tw.media("outbound", i, bytes([0xFF]) * 160, 3 + 2 * i))
                    await media.send(tw.stop(seq=500))
                while True:
                    msg = await asyncio.wait_for(live.recv(), 10)
                    live_msgs.append(msg)
                    if orjson.loads(msg)["type"] == "call.ended":
                        break
            async with httpx.AsyncClient(base_url=f"http://{hostport}") as api:
                for _ in range(200):  # the live feed is faster than the store's batched writes
                    if (await api.get("/api/calls/CAcard/notes")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                transcript = (await api.get("/api/calls/CAcard/transcript?format=txt")).text
                events = (await api.get("/api/calls/CAcard/events")).text
                notes = (await api.get("/api/calls/CAcard/notes")).json()
            for _ in range(200):  # the webhook worker delivers asynchronously
                if any(r["body"]["type"] == "call.ended" for r in receiver.accepted):
                    break
                await asyncio.sleep(0.05)

    feed = [orjson.loads(m) for m in live_msgs]
    # the mask: the final of each utterance carries it; only the last four are shown
    finals = [e for e in feed if e["type"] == "transcript" and e["is_final"] and e["speaker"] == "caller"]
    assert any("[card ending 6467]" in e["text"] for e in finals), finals
    # every output, every form
    outputs = {
        "live feed": "\n".join(live_msgs),
        "console": console.getvalue(),
        "jsonl": (tmp_path / "events.jsonl").read_text(),
        "stored transcript": transcript,
        "stored events": events,
        "webhooks": "\n".join(r["raw"].decode() for r in receiver.requests),
        "logs": "\n".join(r.getMessage() for r in caplog.records),
    }
    for where, blob in outputs.items():
        assert_masked(blob, where)
    assert "[card ending 6467]" in outputs["stored transcript"]
    assert "[card ending 6467]" in outputs["webhooks"]

    # the trigger fired once, on a partial, before that utterance's final
    kinds = [(e["type"], e.get("utterance_id"), e.get("is_final")) for e in feed]
    fired = [i for i, e in enumerate(feed) if e["type"] == "trigger.fired"]
    assert len(fired) == 1 and feed[fired[0]]["rule_id"] == "card-payment"
    assert feed[fired[0]]["is_final"] is False and feed[fired[0]]["payload"]["script"]
    final_u1 = kinds.index(("transcript", "u1", True))
    assert fired[0] < final_u1
    assert '"trigger.fired"' in outputs["webhooks"] and "card-payment" in events

    # the notes: redaction counts, the trigger, both speakers' talk time; in the API and the webhook
    assert notes["redactions"].get("card") == 1
    assert [t["rule_id"] if "rule_id" in t else t.get("rule") for t in notes["triggers"]] == ["card-payment"]
    assert set(notes["talk_time"]) == {"caller", "agent"}
    ended_hook = next(r["body"] for r in receiver.accepted if r["body"]["type"] == "call.ended")
    assert ended_hook["data"]["notes"]["redactions"]["card"] == 1
