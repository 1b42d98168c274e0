"""The fake Gladia server behaves like Gladia live v2 (protocols.md §3.2), over real loopback sockets."""

from __future__ import annotations

import argparse
import base64
import copy
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callscribe.fakes.gladia import FakeGladia, ScriptLine, add_arguments, load_script, run

KEY = "test-key"
SCRIPT = {
    "0": [{"start": 0.2, "end": 0.8, "text": "hello there caller"}],
    "1": [{"start": 0.4, "end": 0.6, "text": "agent"}],
}
FLAGS = {
    "receive_partial_transcripts": True,
    "receive_final_transcripts": True,
    "receive_speech_events": True,
    "receive_pre_processing_events": False,
    "receive_realtime_processing_events": False,
    "receive_post_processing_events": True,
    "receive_acknowledgments": True,
    "receive_errors": True,
    "receive_lifecycle_events": True,
}
BODY: dict[str, Any] = {
    "encoding": "wav/ulaw",
    "bit_depth": 8,
    "sample_rate": 8000,
    "channels": 1,
    "model": "solaria-1",
    "endpointing": 0.3,
    "maximum_duration_without_endpointing": 15,
    "language_config": {"languages": ["en"], "code_switching": False},
    "messages_config": FLAGS,
    "custom_metadata": {"call_sid": "CA1"},
}


@pytest.fixture
async def fake() -> Any:
    async with FakeGladia(api_key=KEY, script=SCRIPT, max_sessions=2, post_processing_delay=0.01) as server:
        yield server


async def post(fake: FakeGladia, body: Any = BODY, key: str | None = KEY) -> httpx.Response:
    headers = {"x-gladia-key": key} if key is not None else {}
    async with httpx.AsyncClient() as client:
        return await client.post(f"{fake.url}/v2/live", json=body, headers=headers)


async def open_session(fake: FakeGladia, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    for key, value in changes.items():
        if key in FLAGS:
            body["messages_config"][key] = value
        else:
            body[key] = value
    resp = await post(fake, body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def recv(ws: ClientConnection, until: str | None = None) -> list[dict[str, Any]]:
    """Messages until one of type ``until`` (included) or the socket closes."""
    out: list[dict[str, Any]] = []
    try:
        while True:
            out.append(orjson.loads(await ws.recv()))
            if out[-1]["type"] == until:
                return out
    except ConnectionClosed:
        return out


def of(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == kind]


async def test_post_requires_the_key(fake: FakeGladia) -> None:
    for key in (None, "wrong"):
        resp = await post(fake, key=key)
        assert resp.status_code == 401
        assert "x-gladia-key" in resp.json()["message"]
    assert fake.sessions == {}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"encoding": "ulaw"}, "encoding must be one of"),
        ({"bit_depth": 12}, "bit_depth must be one of"),
        ({"bit_depth": 16}, "bit_depth must be 8 when encoding is wav/ulaw"),
        ({"sample_rate": 22050}, "sample_rate must be one of"),
        ({"channels": 9}, "channels must be an integer between 1 and 8"),
        ({"channels": True}, "channels must be an integer"),
        ({"model": "solaria-9"}, "model must be one of"),
        ({"endpointing": 0.001}, "endpointing must be a number between 0.01 and 10"),
        ({"maximum_duration_without_endpointing": 61}, "maximum_duration_without_endpointing must be"),
        ({"language_config": {"languages": ["xx"]}}, "language_config.languages must only contain"),
        ({"messages_config": {"receive_partial_transcripts": "yes"}}, "must be a boolean value"),
        ({"messages_config": {"receive_everything": True}}, "receive_everything should not exist"),
        ({"frames_format": "bytes"}, "property frames_format should not exist"),
    ],
)
async def test_post_validates_like_gladia(fake: FakeGladia, change: dict[str, Any], needle: str) -> None:
    resp = await post(fake, {**BODY, **change})
    assert resp.status_code == 400
    data = resp.json()
    assert data["message"] == "Invalid parameter(s). See validation_errors for more details."
    assert data["request_id"].startswith("G-")
    assert any(needle in e for e in data["validation_errors"]), data["validation_errors"]


async def test_post_rejects_non_json(fake: FakeGladia) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{fake.url}/v2/live", content=b"{", headers={"x-gladia-key": KEY})
    assert resp.status_code == 400


async def test_create_get_list_delete(fake: FakeGladia) -> None:
    init = await open_session(fake)
    assert set(init) == {"id", "created_at", "url"} and init["created_at"].endswith("Z")
    assert init["url"].startswith(f"ws://127.0.0.1:{fake.port}/v2/live?token=")
    headers = {"x-gladia-key": KEY}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as client:
        got = (await client.get(f"/v2/live/{init['id']}")).json()
        assert got["status"] == "queued" and got["kind"] == "live" and got["version"] == 2
        assert got["custom_metadata"] == {"call_sid": "CA1"} and got["request_params"]["channels"] == 1
        assert got["fake"]["bytes_received"] == 0
        listing = (await client.get("/v2/live")).json()
        assert [item["id"] for item in listing["items"]] == [init["id"]]
        assert (await client.get(f"/v2/live/{init['id']}", headers={"x-gladia-key": "no"})).status_code == 401
        assert (await client.delete(f"/v2/live/{init['id']}")).status_code == 202
        assert (await client.get(f"/v2/live/{init['id']}")).status_code == 404


async def test_concurrency_cap_and_forced_failures(fake: FakeGladia) -> None:
    await open_session(fake)
    await open_session(fake)
    third = await post(fake)
    assert third.status_code == 429 and "concurrent" in third.json()["message"]
    fake.sessions.clear()
    fake.fail_next(500)
    fake.fail_next(429)
    assert (await post(fake)).status_code == 500
    assert (await post(fake)).status_code == 429
    assert (await post(fake)).status_code == 201


async def test_unknown_token_is_refused_with_403(fake: FakeGladia) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{fake.port}/v2/live?token=nope"):
            pass
    assert info.value.response.status_code == 403


async def test_script_stream_and_stop_sequence(fake: FakeGladia) -> None:
    init = await open_session(fake)
    async with connect(init["url"]) as ws:
        messages = await recv(ws, "start_recording")
        for _ in range(12):  # 1.2 s in 100 ms chunks: past 0.8 + 0.3 endpointing
            await ws.send(b"\x55" * 800)
        messages += await recv(ws, "speech_end")
        await ws.send('{"type":"stop_recording"}')
        messages += await recv(ws)
        assert ws.close_code == 1000
    acks = of(messages, "audio_chunk")
    assert [a["data"]["byte_range"] for a in acks] == [[i * 800, (i + 1) * 800] for i in range(len(acks))]
    assert acks[1]["data"]["time_range"] == [0.1, 0.2] and acks[0]["acknowledged"] is True
    transcripts = of(messages, "transcript")
    partials = [t for t in transcripts if not t["data"]["is_final"]]
    finals = [t for t in transcripts if t["data"]["is_final"]]
    assert len(partials) >= 2 and len(finals) == 1
    assert {t["data"]["id"] for t in transcripts} == {"00_00000000"}
    texts = [p["data"]["utterance"]["text"] for p in partials]
    assert texts == sorted(texts, key=len) and texts[0] == " hello"
    utt = finals[0]["data"]["utterance"]
    assert utt["text"] == " hello there caller" and utt["channel"] == 0 and utt["language"] == "en"
    assert [(w["word"], w["start"], w["end"]) for w in utt["words"]] == [
        (" hello", 0.2, 0.4),
        (" there", 0.4, 0.6),
        (" caller", 0.6, 0.8),
    ]
    kinds = [m["type"] for m in messages]
    assert kinds.index("speech_start") < kinds.index("transcript")
    tail = ["stop_recording", "end_recording", "post_transcript", "post_final_transcript", "end_session"]
    assert kinds[-5:] == tail
    stop_ack = of(messages, "stop_recording")[0]
    assert stop_ack["acknowledged"] is True and stop_ack["data"]["recording_duration"] == 1.2
    post_final = of(messages, "post_final_transcript")[0]["data"]
    assert post_final["transcription"]["full_transcript"] == "hello there caller"
    session = fake.sessions[init["id"]]
    assert session.ended and session.bytes_received == 9600 and len(session.audio) == 9600
    with pytest.raises(InvalidStatus) as info:  # an ended session cannot be resumed
        async with connect(init["url"]):
            pass
    assert info.value.response.status_code == 403
    async with httpx.AsyncClient() as client:
        got = (await client.get(f"{fake.url}/v2/live/{init['id']}", headers={"x-gladia-key": KEY})).json()
    assert got["status"] == "done" and got["result"]["transcription"]["utterances"][0]["channel"] == 0


async def test_stop_flushes_an_utterance_cut_by_the_end_of_audio(fake: FakeGladia) -> None:
    init = await open_session(fake, receive_partial_transcripts=False)
    async with connect(init["url"]) as ws:
        await ws.send(b"\x55" * 6400)  # exactly 0.8 s: the script line ends at the last byte
        await ws.send('{"type":"stop_recording"}')
        messages = await recv(ws)
    finals = of(messages, "transcript")
    assert [f["data"]["utterance"]["text"] for f in finals] == [" hello there caller"]
    kinds = [m["type"] for m in messages]
    assert kinds.index("stop_recording") < kinds.index("transcript") < kinds.index("end_session")


async def test_messages_config_is_honoured(fake: FakeGladia) -> None:
    init = await open_session(
        fake,
        receive_partial_transcripts=False,
        receive_speech_events=False,
        receive_acknowledgments=False,
        receive_lifecycle_events=False,
        receive_post_processing_events=False,
    )
    async with connect(init["url"]) as ws:
        await ws.send(b"\x55" * 12000)
        await ws.send('{"type":"stop_recording"}')
        messages = await recv(ws)
        assert ws.close_code == 1000
    assert [m["type"] for m in messages] == ["transcript"] and messages[0]["data"]["is_final"]


async def test_json_audio_chunks_and_keepalive(fake: FakeGladia) -> None:
    init = await open_session(fake, receive_lifecycle_events=False)
    async with connect(init["url"]) as ws:
        await ws.send('{"type":"audio_chunk","data":{"chunk":""}}')  # keep-alive: no bytes, no ack
        chunk = base64.b64encode(b"\x55" * 400).decode()
        await ws.send(orjson.dumps({"type": "audio_chunk", "data": {"chunk": chunk}}).decode())
        ack = orjson.loads(await ws.recv())
        assert ack["type"] == "audio_chunk" and ack["data"]["byte_range"] == [0, 400]
        await ws.send('{"type":"audio_chunk","data":{"chunk":"%%%"}}')
        err = orjson.loads(await ws.recv())
        assert err["type"] == "error" and err["data"]["code"] == "invalid_audio_format"
    assert fake.sessions[init["id"]].bytes_received == 400


async def test_second_stop_is_refused() -> None:
    async with FakeGladia(api_key=KEY, post_processing_delay=0.3) as fake:
        init = await open_session(fake, receive_lifecycle_events=False)
        async with connect(init["url"]) as ws:
            await ws.send(b"\x55" * 800)
            await ws.send('{"type":"stop_recording"}')
            await ws.send('{"type":"stop_recording"}')
            messages = await recv(ws)
    stops = of(messages, "stop_recording")
    assert [s["acknowledged"] for s in stops] == [True, False]
    assert stops[1]["data"] is None and stops[1]["error"]["message"] == "Recording already stopped"


async def test_resume_keeps_state_and_byte_range(fake: FakeGladia) -> None:
    init = await open_session(fake, channels=2)
    session_id = init["id"]
    async with connect(init["url"]) as ws:
        assert (await recv(ws, "start_recording"))[-1]["type"] == "start_recording"
        await ws.send(b"\x01\x02" * 800)
        await recv(ws, "audio_chunk")
        await fake.drop(session_id, code=1011)
        await recv(ws)
        assert ws.close_code == 1011
    async with connect(init["url"]) as ws:  # same URL, no new POST
        await ws.send(b"\x01\x02" * 400)
        messages = await recv(ws, "audio_chunk")
        assert "start_recording" not in [m["type"] for m in messages]  # sent once per session
        assert messages[-1]["data"]["byte_range"] == [1600, 2400]
    session = fake.sessions[session_id]
    assert session.connections == 2 and session.bytes_per_channel == [1200, 1200]
    assert bytes(session.audio) == b"\x01\x02" * 1200 and not session.ended


async def test_drop_when_threshold_and_channel_times(fake: FakeGladia) -> None:
    init = await open_session(fake, channels=2, receive_partial_transcripts=False)
    fake.drop_when(16000, code=1012)  # 1.0 s per channel
    async with connect(init["url"]) as ws:
        for _ in range(14):
            await ws.send(b"\x55" * 1600)  # 100 ms of 2 channels
        messages = await recv(ws)
        assert ws.close_code == 1012
    session = fake.sessions[init["id"]]
    assert session.bytes_received == 16000  # nothing counted after the drop
    finals = of(messages, "transcript")
    assert [(f["data"]["id"], f["data"]["utterance"]["channel"]) for f in finals] == [("01_00000000", 1)]


async def test_oversized_frame_is_closed_with_1009(fake: FakeGladia) -> None:
    init = await open_session(fake)
    async with connect(init["url"], max_size=None) as ws:
        await ws.send(b"\x55" * (1024 * 1024 + 1))
        await recv(ws)
        assert ws.close_code == 1009
    assert fake.sessions[init["id"]].bytes_received == 0


def test_load_script_forms(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_bytes(
        orjson.dumps({"outbound": [{"start": 2, "end": 3, "text": "b"}, {"start": 0, "end": 1, "text": "a"}]})
    )
    script = load_script(path)
    assert script == {1: (ScriptLine(0.0, 1.0, "a"), ScriptLine(2.0, 3.0, "b"))}
    assert load_script({0: [{"start": 0, "end": 1, "text": "x y"}]})[0][0].words() == [
        ("x", 0.0, 0.5),
        ("y", 0.5, 1.0),
    ]
    assert load_script(None) == {}
    with pytest.raises(ValueError):
        load_script({"0": [{"start": 2, "end": 1, "text": "backwards"}]})


def test_cli_arguments_and_bad_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--api-key", "k", "--script", str(tmp_path / "missing.json")])
    assert (args.host, args.port, args.api_key, args.max_sessions) == ("127.0.0.1", 0, "k", 30)
    assert run(args) == 2
    assert "cannot read script" in capsys.readouterr().out
