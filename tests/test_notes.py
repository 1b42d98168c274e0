"""End-of-call notes from a simulated two-speaker call, and the optional LLM summary."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import httpx
import pytest

from callscribe.events import (
    CallEnded,
    CallError,
    CallInfo,
    CallStarted,
    Track,
    TranscriptEvent,
    TriggerFired,
)
from callscribe.intelligence.notes import NotesBuilder, summarize, topics
from callscribe.intelligence.triggers import Rule, TriggerEngine

T0 = 1_700_000_000.0


def tr(uid: str, track: Track, text: str, start: float, end: float, final: bool = True) -> TranscriptEvent:
    speaker = "caller" if track is Track.INBOUND else "agent"
    return TranscriptEvent("CA1", "MZ1", track, speaker, uid, text, final, start, end)


CALLER, AGENT = Track.INBOUND, Track.OUTBOUND

# caller 0.5–3.0 and 6.0–9.0, agent 2.5–5.0 and 8.0–10.0, call 12 s:
# talk caller 5.5, agent 4.5; someone talks 0.5–5.0 and 6.0–10.0 = 8.5 → silence 3.5; overlap 0.5 + 1.0.
CALL = [
    tr("c1", CALLER, "Hi, my internet keeps dropping", 0.5, 2.0, final=False),
    tr("a1", AGENT, "Sorry to hear that. Is the router on?", 2.5, 5.0),  # arrives before c1's final
    tr(
        "c1",
        CALLER,
        "Hi, my internet keeps dropping every evening and I want to cancel my subscription.",
        0.5,
        3.0,
    ),
    tr(
        "c2",
        CALLER,
        "The router is on. My card is [card ending 1111] for the internet subscription.",
        6.0,
        9.0,
    ),
    tr("a2", AGENT, "I can reset the router and check the internet subscription billing.", 8.0, 10.0),
    tr(
        "a2", AGENT, "I can reset the router and check the internet subscription billing.", 8.0, 10.0
    ),  # replayed
    tr("a3", AGENT, "", 10.5, 10.6),  # an utterance the engine dropped
]


def simulated_call() -> tuple[NotesBuilder, CallEnded]:
    builder = NotesBuilder()
    engine = TriggerEngine(
        rules=[Rule("cancel-intent", phrases=("cancel my subscription",), severity="warning")]
    )
    builder.observe(CallStarted(CallInfo("CA1", "MZ1", (CALLER, AGENT)), "local", at=T0))
    for event in CALL:
        builder.observe(event)
        for fired in engine.process(event):
            builder.observe(fired)
    builder.observe(CallError("CA1", "MZ1", "engine", "hiccup", retrying=True))
    return builder, CallEnded("CA1", "MZ1", "stop", 12.0, at=T0 + 12.5)


def test_notes_of_a_two_speaker_call() -> None:
    builder, ended = simulated_call()
    notes = builder.build(ended, redactions={"card": 1})
    json.dumps(notes)  # JSON-ready as is
    assert notes["call_sid"] == "CA1" and notes["reason"] == "stop"
    assert notes["duration"] == 12.0 and notes["started_at"] == T0
    assert notes["speakers"] == ["caller", "agent"]
    assert notes["talk_time"] == {"caller": 5.5, "agent": 4.5}
    assert notes["utterances"] == {"caller": 2, "agent": 2}
    assert notes["silence_time"] == 3.5 and notes["silence_share"] == pytest.approx(3.5 / 12, abs=1e-3)
    assert notes["overlap_time"] == 1.5 and notes["overlap_share"] == pytest.approx(1.5 / 12, abs=1e-3)
    [trigger] = notes["triggers"]
    assert trigger["rule_id"] == "cancel-intent" and trigger["severity"] == "warning"
    assert trigger["utterance_id"] == "c1" and trigger["speaker"] == "caller"
    assert trigger["matched"] == "cancel my subscription"
    assert trigger["time"] == 0.5  # the start of the caller's utterance, on the audio clock
    assert notes["triggers_total"] == 1 and notes["errors"] == 1
    assert notes["redactions"] == {"card": 1}
    assert [(e["speaker"], e["text"][:12]) for e in notes["first_exchanges"]] == [
        ("caller", "Hi, my inter"),
        ("agent", "Sorry to hea"),
    ]
    assert [(e["speaker"], e["start"]) for e in notes["last_exchanges"]] == [("caller", 6.0), ("agent", 8.0)]
    assert notes["summary"] is None


def test_topics_are_sensible_and_skip_masks() -> None:
    builder, ended = simulated_call()
    found = builder.build(ended)["topics"]
    assert 0 < len(found) <= 8
    words = {w for topic in found for w in topic.split()}
    assert {"internet", "router"} & words
    assert not {"card", "ending", "1111"} & words
    assert len(words) == sum(len(t.split()) for t in found)  # no word in two topics: de-duplicated


def test_build_forgets_the_call_and_handles_an_unknown_one() -> None:
    builder, ended = simulated_call()
    builder.build(ended)
    notes = builder.build(ended)
    assert notes["talk_time"] == {} and notes["topics"] == [] and notes["triggers"] == []
    assert notes["silence_share"] == 1.0 and notes["overlap_share"] == 0.0


def test_trigger_time_falls_back_to_the_wall_clock_without_a_final() -> None:
    builder = NotesBuilder()
    builder.observe(CallStarted(CallInfo("CA1", "MZ1", (CALLER,)), "local", at=T0))
    fired = TriggerFired("CA1", "MZ1", "r", "u9", CALLER, "caller", "refund", "a refund", False, at=T0 + 4.25)
    builder.observe(fired)
    builder.observe(tr("u9", CALLER, "", 3.0, 4.0))  # the engine dropped the utterance
    [trigger] = builder.build(CallEnded("CA1", "MZ1", "stop", 5.0))["triggers"]
    assert trigger["time"] == 4.25 and trigger["at"] == T0 + 4.25
    # A trigger observed after its final takes the final's start.
    builder.observe(tr("u1", CALLER, "a refund", 1.0, 2.0))
    builder.observe(replace(fired, utterance_id="u1"))
    assert builder.build(CallEnded("CA1", "MZ1", "stop", 5.0))["triggers"][0]["time"] == 1.0


def test_calls_are_kept_apart() -> None:
    builder = NotesBuilder()
    builder.observe(tr("x", CALLER, "Hello there.", 0.0, 1.0))
    builder.observe(TranscriptEvent("CA2", "MZ2", AGENT, "agent", "y", "Other call.", True, 0.0, 2.0))
    notes = builder.build(CallEnded("CA2", "MZ2", "stop", 0.0))
    assert notes["talk_time"] == {"agent": 2.0} and notes["duration"] == 2.0  # stretched to the last final
    assert builder.build(CallEnded("CA1", "MZ1", "stop", 1.0))["utterances"] == {"caller": 1}


def test_topics_helper() -> None:
    assert topics("") == [] and topics("[card ending 1111]") == []
    found = topics("Subscription billing. The subscriptions cost too much. Billing is wrong again.")
    assert len([t for t in found if t.startswith("subscription")]) <= 1


# --- summarize -------------------------------------------------------------------------------

NOTES = {"call_sid": "CA1", "duration": 12.0, "topics": ["internet"], "summary": None}


async def test_summarize_against_an_openai_compatible_server() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " The caller wants to cancel. "}}
                ]
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        summary = await summarize(
            NOTES,
            "caller: I want to cancel.",
            base_url="https://llm.example/v1/",
            model="m1",
            api_key="sk-1",
            client=client,
        )
    assert summary == "The caller wants to cancel."
    [request] = seen
    assert request.url == "https://llm.example/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-1"
    body = json.loads(request.content)
    assert body["model"] == "m1"
    assert "caller: I want to cancel." in body["messages"][-1]["content"]
    assert '"topics": ["internet"]' in body["messages"][-1]["content"]


@pytest.mark.parametrize(
    "respond",
    [
        lambda r: httpx.Response(500, text="boom"),
        lambda r: httpx.Response(200, text="not json"),
        lambda r: httpx.Response(200, json={"choices": []}),
        lambda r: httpx.Response(200, json={"choices": [{"message": {"content": "  "}}]}),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
    ],
)
async def test_summarize_failure_is_none(respond, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        with caplog.at_level(logging.WARNING, logger="callscribe.intelligence.notes"):
            summary = await summarize(
                NOTES,
                "text",
                base_url="http://llm.local/v1/chat/completions",
                model="m",
                api_key=None,
                client=client,
            )
    assert summary is None
    [record] = caplog.records
    assert "CA1" in record.getMessage() and "no summary" in record.getMessage()


async def test_summarize_without_a_client_on_an_unreachable_server() -> None:
    assert (
        await summarize(NOTES, "t", base_url="http://127.0.0.1:9", model="m", api_key=None, timeout=2) is None
    )
