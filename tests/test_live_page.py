"""The agent's live page in a real browser: a simulated call through the real app, watched as it happens.

The app runs under uvicorn with the Gladia engine pointed at an in-process FakeGladia that speaks the
demo script; the simulator streams the demo WAVs in real time; Chromium (Debian's, never downloaded)
opens ``/``, the call is chosen in the list, and the transcript must fill in: partials replaced in
place by finals, each final in its speaker's bubble. Writes ``out/live_page.png`` and
``out/live_page_latency.json`` (time a final is shown − the engine's ``received_at``).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from importlib import resources
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from callscribe.audio.wav import wav_to_ulaw
from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.engines.gladia import GladiaEngine
from callscribe.events import (
    CallInfo,
    CallStarted,
    Track,
    TranscriptEvent,
)
from callscribe.fakes.gladia import FakeGladia
from callscribe.server.app import create_app
from callscribe.simulator.messages import CallIds
from callscribe.simulator.runner import simulate_call
from callscribe.sinks.store import StoreSink
from callscribe.storage import Store
from tests.asgi_server import serving
from tests.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.slow

DEMO = Path(str(resources.files("callscribe.demo")))
SCRIPT = json.loads((DEMO / "script.json").read_text())
OUT = Path(__file__).resolve().parent.parent / "out"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "live-page-key"

# Records, in the page, every state each transcript bubble went through (partial/final + text).
OBSERVE = """() => {
  window.bubbleLog = [];
  const log = (li) => window.bubbleLog.push({
    id: li.dataset.utteranceId,
    final: li.classList.contains("final"),
    text: li.querySelector(".bubble").textContent,
  });
  new MutationObserver((records) => {
    for (const r of records) {
      const li = (r.target.nodeType === 1 ? r.target : r.target.parentElement)?.closest("li.turn");
      if (li) log(li);
      for (const n of r.addedNodes) if (n.nodeType === 1 && n.matches("li.turn")) log(n);
    }
  }).observe(document.getElementById("transcript"),
             {childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ["class"]});
}"""


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9' ]", "", text.lower()).strip()


async def test_live_page_shows_the_call_as_it_happens(tmp_path: Path) -> None:
    OUT.mkdir(exist_ok=True)
    caller = wav_to_ulaw(DEMO / "caller.wav")
    agent = wav_to_ulaw(DEMO / "agent.wav")
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    await store.start()
    try:
        async with FakeGladia(api_key=KEY, script=DEMO / "script.json") as fake:
            settings = load_settings(
                None, engine="gladia", gladia_api_key=KEY, gladia_api_url=fake.url, sinks=[]
            )
            app = create_app(settings, EngineRouter(GladiaEngine(settings)), [StoreSink(store)], store=store)
            async with serving(app) as host, async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 860})
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    await page.goto(f"http://{host}/")
                    await page.evaluate(OBSERVE)
                    result, shown, log = await _call_through_page(page, host, caller, agent)
                    await page.screenshot(path=str(OUT / "live_page.png"), full_page=False)
                    print(f"\nscreenshot: {OUT / 'live_page.png'} (mid-call: live_page_partial.png)")
                    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
                    await page.screenshot(path=str(OUT / "live_page_phone.png"))
                    await _check_accessibility(page)
                    bubbles = await page.eval_on_selector_all(
                        "#transcript li.turn",
                        """els => els.map(li => ({id: li.dataset.utteranceId, side: li.classList.contains('agent')
                            ? 'agent' : 'caller', final: li.classList.contains('final'),
                            text: li.querySelector('.bubble').textContent}))""",
                    )
                    assert not errors, errors
                finally:
                    await browser.close()
    finally:
        await store.close()

    assert result.ended and not result.error
    # every scripted line, in its speaker's bubble, final, once, in speaking order
    lines = sorted((ln["start"], ch, ln["text"]) for ch, lns in SCRIPT.items() for ln in lns)
    want = [("caller" if ch == "0" else "agent", _norm(text)) for _, ch, text in lines]
    assert [(b["side"], _norm(b["text"])) for b in bubbles] == want
    assert all(b["final"] for b in bubbles)
    assert len({b["id"] for b in bubbles}) == len(bubbles)
    # partials were shown in progress, then replaced in place by the final of the same utterance
    partial_ids = {e["id"] for e in log if not e["final"]}
    assert partial_ids, "no partial was ever shown"
    assert partial_ids <= {b["id"] for b in bubbles}
    for uid in partial_ids:
        states = [e["final"] for e in log if e["id"] == uid]
        assert states[-1] is True and states.index(True) > 0  # partial(s) first, then the final

    # feed latency: shown on the page − produced by the engine
    finals = {ev.data["utterance_id"]: ev.data["received_at"] for ev in result.finals}
    latencies = [shown[uid] - finals[uid] * 1000 for uid in finals if uid in shown]
    assert len(latencies) >= len(finals) - 1, (shown, finals)  # the first may predate the click
    report = {
        "finals": len(finals),
        "measured": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "max_ms": round(max(latencies), 1),
        "latencies_ms": [round(x, 1) for x in latencies],
    }
    (OUT / "live_page_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"feed latency (page shown − received_at): p50 {report['p50_ms']} ms, max {report['max_ms']} ms")
    assert report["max_ms"] < 2000


async def _call_through_page(page, host: str, caller: bytes, agent: bytes):  # type: ignore[no-untyped-def]
    ids = CallIds.new()
    call = asyncio.create_task(
        simulate_call(f"ws://{host}/media", caller, agent, realtime=True, ids=ids, drain_timeout=20)
    )
    # the call shows up in the live list (polled every 2 s); choose it with the keyboard
    button = page.locator(f'#live-calls button[data-call-sid="{ids.call_sid}"]')
    await button.wait_for(timeout=8000)
    await button.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        "sid => document.getElementById('call-title').textContent.includes(sid)", arg=ids.call_sid
    )
    # a partial in progress, mid-call
    await page.wait_for_selector("#transcript li.turn.partial .tentative", timeout=15000)
    await page.screenshot(path=str(OUT / "live_page_partial.png"))
    result = await call
    n_lines = sum(len(v) for v in SCRIPT.values())
    await page.wait_for_function(
        "n => document.querySelectorAll('#transcript li.turn.final').length >= n", arg=n_lines, timeout=10000
    )
    await page.wait_for_selector("#transcript li.note.ended", timeout=10000)
    await page.wait_for_selector("#live-empty:not([hidden])", timeout=5000)  # no longer live
    await page.wait_for_function(  # the recent list has it, ended
        "sid => document.querySelector(`#recent-calls button[data-call-sid='${sid}']`)"
        "?.textContent.includes('ended')",
        arg=ids.call_sid,
        timeout=5000,
    )
    shown = await page.evaluate("window.callscribeShown")
    log = await page.evaluate("window.bubbleLog")
    return result, shown, log


async def _check_accessibility(page) -> None:  # type: ignore[no-untyped-def]
    """Landmarks, a polite live region, and a call list usable from the keyboard."""
    assert await page.locator("header").count() == 1
    assert await page.locator("nav[aria-labelledby]").count() == 1
    assert await page.locator("main[aria-labelledby]").count() == 1
    transcript = page.locator("#transcript")
    assert await transcript.get_attribute("aria-live") == "polite"
    current = page.locator('.call-list button[aria-current="true"]')
    assert await current.count() >= 1
    assert await page.locator(".call-list button:not([type=button])").count() == 0


async def test_live_page_masks_redactions_highlights_triggers_and_resumes(tmp_path: Path) -> None:
    """A caller reads a card number across partials and two finals, through the gateway's real
    redaction and trigger stage: the page shows only the mask, and the agent's screen gets the
    trigger; then the page's feed is cut and must resume from the store."""
    sid = "CA" + "7" * 32
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "card-payment"\nphrases = ["card number"]\nseverity = "warning"\n'
        '[rule.payload]\nscript = "Remind the caller this line is secure."\n'
        'kb = "https://kb.example.com/pci"\n'
    )
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    await store.start()
    settings = load_settings(None, sinks=[], triggers_path=str(rules))
    app = create_app(settings, EngineRouter(ScriptedEngine()), [StoreSink(store)], store=store)
    gw = app.state.gateway

    def said(uid: str, track: Track, text: str, start: float, final: bool = True) -> TranscriptEvent:
        speaker = "caller" if track is Track.INBOUND else "agent"
        return TranscriptEvent(sid, "MZ1", track, speaker, uid, text, final, start, start + 1)

    try:
        async with serving(app) as host, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(f"http://{host}/#{sid}")  # a deep link opens the call
                await page.wait_for_function("document.getElementById('connection').dataset.state === 'live'")
                gw.publish(CallStarted(CallInfo(sid, "MZ1", tracks=tuple(Track)), "scripted"))
                gw.publish(said("u1", Track.INBOUND, "I'd like to pay, my card number is", 1.0, final=False))
                await page.wait_for_selector("li.note.trigger")  # on the partial, before any final
                gw.publish(said("u1", Track.INBOUND, "I'd like to pay, my card number is 4539 1488", 1.0, False))
                gw.publish(said("u1", Track.INBOUND, "I'd like to pay, my card number is 4539 1488.", 1.0))
                gw.publish(said("u2", Track.INBOUND, "0343", 2.2, final=False))
                gw.publish(said("u2", Track.INBOUND, "0343 6467.", 2.2))
                gw.publish(said("u3", Track.OUTBOUND, "Thank you, one moment please.", 3.4))
                await page.wait_for_selector("li.turn.caller.final[data-utterance-id=u2]")
                await page.wait_for_selector("li.turn.agent.final[data-utterance-id=u3]")
                masks = await page.eval_on_selector_all("mark.redacted", "els => els.map(e => e.textContent)")
                assert masks == ["card ending 6467", "card ending 6467"]
                shown = await page.text_content("#transcript")
                assert not any(group in shown for group in ("4539", "1488", "0343")), shown
                trigger = page.locator("li.note.trigger")
                assert await trigger.count() == 1
                assert "card-payment" in await trigger.text_content()
                assert "line is secure" in await trigger.text_content()
                assert await trigger.locator("a").get_attribute("href") == "https://kb.example.com/pci"
                await page.screenshot(path=str(OUT / "live_page_redactions.png"))

                # the feed drops; a final is spoken meanwhile; the page reconnects and resumes
                await page.evaluate("window.callscribe.ws.close()")
                await page.wait_for_function(
                    "document.getElementById('connection').dataset.state === 'retrying'"
                )
                gw.publish(said("u4", Track.INBOUND, "said while you were away", 5.0))
                await page.wait_for_selector("li.turn.caller.final[data-utterance-id=u4]", timeout=10000)
                await page.wait_for_function("document.getElementById('connection').dataset.state === 'live'")
                order = await page.eval_on_selector_all(
                    "#transcript li", "els => els.map(e => e.dataset.utteranceId || e.className)"
                )
                assert order == ["u1", "note trigger warning", "u2", "u3", "u4"]  # each once, in order
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        await store.close()
