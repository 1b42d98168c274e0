"""GladiaEngine against the fake Gladia server over loopback: transcripts, drain, resume, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from callscribe.audio.interleave import Interleaver
from callscribe.config import Settings
from callscribe.engines.base import EngineBusy, EngineOutput
from callscribe.engines.gladia import Backoff, GladiaEngine, GladiaSession
from callscribe.events import CallError, CallInfo, Track, TranscriptEvent
from callscribe.fakes.gladia import FakeGladia

KEY = "engine-key"
IN, OUT = Track.INBOUND, Track.OUTBOUND
SCRIPT = {
    "0": [
        {"start": 0.2, "end": 1.0, "text": "hello from the caller"},
        {"start": 2.2, "end": 3.0, "text": "last words"},  # ends exactly with the audio
    ],
    "1": [{"start": 1.2, "end": 2.0, "text": "agent speaking here"}],
}
SECONDS = 3.0
FRAME = 160  # one 20 ms Twilio frame
BOTH = CallInfo("CA1", "MZ1", account_sid="AC1", tracks=(IN, OUT))


def tone(track: Track, start: int, nbytes: int) -> bytes:
    """Bytes ``[start, start + nbytes)`` of a distinct non-silent μ-law pattern per track."""
    base = 0x10 if track is IN else 0x80
    return bytes(base + (i % 0x60) for i in range(start, start + nbytes))


@pytest.fixture
async def fake() -> Any:
    async with FakeGladia(api_key=KEY, script=SCRIPT, post_processing_delay=0.02) as server:
        yield server


def make_engine(url: str, key: str = KEY, **settings: Any) -> GladiaEngine:
    config = Settings(_env_file=None, gladia_api_key=key, gladia_api_url=url, **settings)  # type: ignore[call-arg]
    return GladiaEngine(config, backoff=Backoff(initial=0.02, maximum=0.1))


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Run:
    """Drives one session: collects its events while audio is fed faster than real time."""

    def __init__(self, session: GladiaSession) -> None:
        self.session = session
        self.events: list[EngineOutput] = []
        self.fed: dict[Track, bytearray] = {IN: bytearray(), OUT: bytearray()}
        self.pushes: list[tuple[Track, bytes]] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Run:
        await self.session.start()
        self._reader = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.aclose()
        if self._reader is not None:
            await self._reader

    async def _collect(self) -> None:
        async for event in self.session.events():
            self.events.append(event)

    def feed(self, track: Track, nbytes: int) -> None:
        data = tone(track, len(self.fed[track]), nbytes)
        self.fed[track] += data
        self.pushes.append((track, data))
        self.session.feed(track, data)

    async def play(self, seconds: dict[Track, float], pause: float = 0.001) -> None:
        """Feed each track up to ``seconds[track]`` in 20 ms frames, pausing every 100 ms of audio."""
        frames = max(int(s * 8000) // FRAME for s in seconds.values())
        for i in range(frames):
            for track, s in seconds.items():
                if i < int(s * 8000) // FRAME:
                    self.feed(track, FRAME)
            if i % 5 == 4:
                await asyncio.sleep(pause)

    async def finish(self, timeout: float = 5.0) -> None:
        await self.session.finish(timeout)
        assert self._reader is not None
        await asyncio.wait_for(self._reader, 1.0)  # events() ends once finished

    @property
    def transcripts(self) -> list[TranscriptEvent]:
        return [e for e in self.events if isinstance(e, TranscriptEvent)]

    @property
    def errors(self) -> list[CallError]:
        return [e for e in self.events if isinstance(e, CallError)]

    def expected_stream(self) -> bytes:
        """What Gladia must have received: the same pushes through a reference interleaver."""
        il = Interleaver()
        return b"".join(il.push(t, d) for t, d in self.pushes) + il.flush()


def connected(fake: FakeGladia) -> bool:
    return any(s.conn is not None for s in fake.sessions.values())


async def test_partials_then_final_per_utterance_on_the_right_speaker(fake: FakeGladia) -> None:
    engine = make_engine(fake.url)
    async with Run(engine.open(BOTH)) as run:
        await wait_for(lambda: connected(fake))
        await run.play({IN: SECONDS, OUT: SECONDS})
        await run.finish()
    await engine.shutdown()

    assert run.errors == []
    by_id: dict[str, list[TranscriptEvent]] = {}
    for event in run.transcripts:
        by_id.setdefault(event.utterance_id, []).append(event)
    assert set(by_id) == {"inbound:00_00000000", "inbound:00_00000001", "outbound:01_00000000"}
    for events in by_id.values():
        assert [e.is_final for e in events] == [False] * (len(events) - 1) + [True]
        assert len(events) >= 2  # at least one partial before the final
    finals = {e.utterance_id: e for e in run.transcripts if e.is_final}
    first = finals["inbound:00_00000000"]
    assert (first.text, first.speaker, first.track) == ("hello from the caller", "caller", IN)
    assert (first.start, first.end) == (0.2, 1.0)  # Gladia's times are the call's audio clock
    assert [w.word for w in first.words] == ["hello", "from", "the", "caller"]
    agent = finals["outbound:01_00000000"]
    assert (agent.text, agent.speaker, agent.track) == ("agent speaking here", "agent", OUT)
    assert agent.engine == "gladia" and agent.call_sid == "CA1" and agent.stream_sid == "MZ1"
    # the final whose script end is exactly the end of the audio is drained by finish()
    assert finals["inbound:00_00000001"].text == "last words"

    session = next(iter(fake.sessions.values()))
    assert session.ended and session.channels == 2
    assert session.config["custom_metadata"]["call_sid"] == "CA1"
    assert session.bytes_per_channel == [24000, 24000]
    assert bytes(session.audio) == run.expected_stream()
    counters = run.session.counters
    assert counters["bytes_sent"] == counters["bytes_acked"] == 48000
    assert counters["reconnects"] == 0 and counters["bytes_unacked"] == 0 and counters["post_attempts"] == 1
    assert counters["frames_sent"] >= 10  # coalesced ~100 ms frames, not one blob


@pytest.mark.parametrize("inclusive", [False, True], ids=["exclusive-acks", "inclusive-acks"])
async def test_dropped_socket_resumes_without_losing_or_duplicating_a_byte(inclusive: bool) -> None:
    async with FakeGladia(api_key=KEY, script=SCRIPT, inclusive_acks=inclusive) as fake:
        fake.drop_when(20000, code=1011)  # mid-call, with frames still in flight
        engine = make_engine(fake.url)
        async with Run(engine.open(BOTH)) as run:
            await wait_for(lambda: connected(fake))
            # the outbound track stops early: the rest of it is padded with silence
            await run.play({IN: SECONDS, OUT: 2.5}, pause=0)  # faster than Gladia acks
            await run.finish()
        await engine.shutdown()
        session = next(iter(fake.sessions.values()))

    assert session.connections == 2 and run.session.counters["reconnects"] == 1
    assert run.session.counters["bytes_resent"] > 0  # frames were in flight when the socket dropped
    expected = run.expected_stream()
    assert len(expected) == 2 * len(run.fed[IN])  # 2 × per-track bytes, padding included
    assert session.bytes_received == len(expected)  # zero lost, none duplicated
    assert bytes(session.audio) == expected
    assert run.session.counters["padded_bytes_outbound"] == 4000
    codes = [e.code for e in run.errors]
    assert codes == ["gladia.disconnected"] and run.errors[0].retrying
    assert {e.utterance_id for e in run.transcripts if e.is_final} == {
        "inbound:00_00000000",
        "inbound:00_00000001",
        "outbound:01_00000000",
    }


async def test_stop_while_disconnected_reconnects_resends_then_stops(fake: FakeGladia) -> None:
    fake.drop_when(48000, code=1011)  # right after the last audio byte, before stop_recording
    engine = make_engine(fake.url)
    async with Run(engine.open(BOTH)) as run:
        await wait_for(lambda: connected(fake))
        await run.play({IN: SECONDS, OUT: SECONDS})
        await run.finish()
    session = next(iter(fake.sessions.values()))
    assert session.ended and session.connections == 2 and session.bytes_received == 48000
    assert "inbound:00_00000001" in {e.utterance_id for e in run.transcripts if e.is_final}


async def test_single_track_stream_uses_one_channel(fake: FakeGladia) -> None:
    engine = make_engine(fake.url, speaker_inbound="customer")
    call = CallInfo("CA2", "MZ2", tracks=(IN,), speakers={IN: "customer"})
    async with Run(engine.open(call)) as run:
        await run.play({IN: 1.5})
        run.session.feed(OUT, b"\xff" * 160)  # not a track of this stream: ignored, counted
        await run.finish()
    session = next(iter(fake.sessions.values()))
    assert session.channels == 1 and bytes(session.audio) == bytes(run.fed[IN])
    finals = [e for e in run.transcripts if e.is_final]
    assert [(e.text, e.speaker, e.track) for e in finals] == [("hello from the caller", "customer", IN)]
    assert run.session.counters["ignored_bytes"] == 160


async def test_unauthorized_is_reported_and_not_retried(fake: FakeGladia) -> None:
    engine = make_engine(fake.url, key="wrong")
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 0.5, OUT: 0.5})
        await run.finish()
    assert [(e.code, e.retrying) for e in run.errors] == [("gladia.unauthorized", False)]
    assert "GLADIA_API_KEY" in run.errors[0].message and run.errors[0].call_sid == "CA1"
    assert fake.posts == 1 and run.transcripts == []
    assert run.session.counters["dropped_bytes"] == 8000


async def test_bad_request_shows_gladias_validation_errors(fake: FakeGladia) -> None:
    engine = make_engine(fake.url, gladia_languages=["xx"])
    async with Run(engine.open(BOTH)) as run:
        await run.finish()
        await asyncio.sleep(0)
    assert run.errors == []  # no audio, no session: nothing was posted
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 0.2, OUT: 0.2})
        await run.finish()
    assert [(e.code, e.retrying) for e in run.errors] == [("gladia.bad_request", False)]
    assert "language_config.languages" in run.errors[0].message and fake.posts == 1


@pytest.mark.parametrize(("status", "code"), [(429, "gladia.rate_limited"), (503, "gladia.server_error")])
async def test_retryable_refusals_are_retried_until_gladia_accepts(
    fake: FakeGladia, status: int, code: str
) -> None:
    fake.fail_next(status, count=3)
    engine = make_engine(fake.url)
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: SECONDS, OUT: SECONDS})  # buffered while the POST is retried
        await run.finish()
    assert [(e.code, e.retrying) for e in run.errors] == [(code, True)]  # one event, not one per try
    assert fake.posts == 4 and run.session.counters["post_attempts"] == 4
    assert len([e for e in run.transcripts if e.is_final]) == 3
    assert next(iter(fake.sessions.values())).bytes_received == 48000


async def test_network_error_is_retried_and_the_drain_deadline_holds() -> None:
    engine = make_engine("http://127.0.0.1:9")  # discard port: connection refused
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 0.5, OUT: 0.5})
        started = time.monotonic()
        await run.finish(timeout=0.3)
        assert time.monotonic() - started < 1.0
    codes = [(e.code, e.retrying) for e in run.errors]
    assert codes == [("gladia.network", True), ("gladia.drain_timeout", False)]
    assert run.session.counters["post_attempts"] >= 2
    await engine.shutdown()


async def test_buffer_is_bounded_and_overflow_is_reported() -> None:
    config = Settings(_env_file=None, gladia_api_key=KEY, gladia_api_url="http://127.0.0.1:9")  # type: ignore[call-arg]
    engine = GladiaEngine(config, backoff=Backoff(0.05, 0.05), max_buffer_seconds=0.5)
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 2.0, OUT: 2.0})
        await run.finish(timeout=0.1)
    overflow = [e for e in run.errors if e.code == "gladia.buffer_full"]
    assert len(overflow) == 1 and overflow[0].retrying
    counters = run.session.counters
    assert counters["dropped_bytes"] > 0 and counters["bytes_unacked"] <= 8000
    assert counters["dropped_bytes"] + counters["bytes_unacked"] == 2 * 16000


async def test_session_closed_by_gladia_mid_call(fake: FakeGladia) -> None:
    engine = make_engine(fake.url)
    async with Run(engine.open(BOTH)) as run:
        await wait_for(lambda: connected(fake))
        await run.play({IN: 0.5, OUT: 0.5})
        await wait_for(lambda: next(iter(fake.sessions.values())).bytes_received >= 7000)
        session_id = next(iter(fake.sessions))
        await fake.drop(session_id, code=1000)  # a normal close is final: never resume it
        await wait_for(lambda: bool(run.errors))
        await run.play({IN: 0.5, OUT: 0.5})
        await run.finish(timeout=1.0)
    assert [(e.code, e.retrying) for e in run.errors] == [("gladia.session_closed", True)]
    # a normal close is never resumed: a new Gladia session takes the rest of the call, nothing lost
    counters = run.session.counters
    assert counters["reconnects"] == 0 and counters["sessions"] == len(fake.sessions) == 2
    assert counters["dropped_bytes"] == counters["bytes_dropped"] == 0
    assert counters["bytes_delivered"] == counters["bytes_fed"] == 16000


async def test_unrecoverable_session_is_reported(fake: FakeGladia) -> None:
    engine = make_engine(fake.url)
    async with Run(engine.open(BOTH)) as run:
        await wait_for(lambda: connected(fake))
        await run.play({IN: 0.5, OUT: 0.5})
        session = next(iter(fake.sessions.values()))
        session.ended = True  # as if Gladia had expired it: the resume handshake gets 403
        await fake.drop(session.id, code=1011)
        await wait_for(lambda: any(e.code == "gladia.session_lost" for e in run.errors))
        await run.finish(timeout=1.0)
    assert [e.code for e in run.errors] == ["gladia.disconnected", "gladia.session_lost"]


async def test_engine_capacity_and_description(fake: FakeGladia) -> None:
    engine = make_engine(fake.url, gladia_region="eu-west")
    engine.max_calls = 1
    await engine.startup()
    first = engine.open(BOTH)
    with pytest.raises(EngineBusy):
        engine.open(BOTH)
    assert engine.describe()["active_calls"] == 1 and engine.describe()["region"] == "eu-west"
    assert "key" not in str(engine.describe()).lower()
    await first.start()
    await first.finish(1.0)
    engine.open(BOTH)  # capacity is released when a call finishes
    await engine.shutdown()


async def test_backlog_after_a_slow_start_is_sent_in_frames_under_1_mib(fake: FakeGladia) -> None:
    fake.fail_next(429)  # audio piles up while the POST is retried
    engine = make_engine(fake.url, gladia_partials=False)
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 40.0, OUT: 40.0}, pause=0)  # 640 kB of 2-channel audio at once
        await run.finish()
    session = next(iter(fake.sessions.values()))
    assert session.bytes_received == 640_000 and session.connections == 1  # no 1009, no resume
    assert run.session.counters["frames_sent"] >= 2
