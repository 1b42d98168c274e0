"""Engine resilience (issue #5): an engine that fails mid-call or is not there at the start of a call
never drops the call, and the audio counters account for every byte.

Gladia runs against the fake Gladia over real loopback WebSockets; the embedded engine runs with a
stub decoder (fast) and with the packaged tiny.en model (``slow``), with faults injected through
the decoder it is given. Every test checks the counters vocabulary of ``engines/base.py``:
``bytes_fed == bytes_delivered + bytes_dropped + bytes_pending`` with ``bytes_pending == 0`` once
the session is finished, and ``bytes_dropped.<reason>`` for every byte not transcribed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callscribe.audio.mulaw import SILENCE
from callscribe.audio.wav import wav_to_ulaw
from callscribe.config import Settings
from callscribe.engines.base import (
    BYTES_DELIVERED,
    BYTES_DROPPED,
    BYTES_FED,
    BYTES_PENDING,
    RESTARTS,
    EngineOutput,
    EngineSession,
    audio_balance,
)
from callscribe.engines.gladia import Backoff, GladiaEngine
from callscribe.engines.local.decoder import Decoded, Decoder, WordTiming
from callscribe.engines.local.engine import LocalEngine
from callscribe.events import CallError, CallInfo, Track, TranscriptEvent
from callscribe.fakes.gladia import FakeGladia
from tests.test_gladia_engine import BOTH, FRAME, IN, KEY, OUT, SCRIPT, SECONDS, Run, connected, wait_for

AUDIO = Path(__file__).parent / "fixtures" / "audio"
SCRIPT_FINALS = {
    "inbound:00_00000000": "hello from the caller",
    "outbound:01_00000000": "agent speaking here",
    "inbound:00_00000001": "last words",
}


def assert_reconciled(counters: dict[str, int], *, fed: int, dropped: dict[str, int] | None = None) -> None:
    """The standard counters add up, nothing is pending, and the drops are exactly ``dropped``."""
    assert counters[BYTES_FED] == fed
    assert audio_balance(counters) == 0, counters
    assert counters[BYTES_PENDING] == 0, counters
    reasons = {
        k.removeprefix(BYTES_DROPPED + "."): v for k, v in counters.items() if k.startswith("bytes_dropped.")
    }
    assert reasons == (dropped or {}), counters
    assert counters[BYTES_DELIVERED] + counters[BYTES_DROPPED] == fed
    if fed % FRAME == 0:  # what the bridge checks, in Twilio frames (160 bytes of one track)
        assert (counters[BYTES_DELIVERED] + counters[BYTES_DROPPED]) // FRAME == fed // FRAME


def script_finals(run: Run) -> dict[str, str]:
    return {e.utterance_id: e.text for e in run.transcripts if e.is_final}


def gladia(url: str, **kwargs: Any) -> GladiaEngine:
    config = Settings(_env_file=None, gladia_api_key=KEY, gladia_api_url=url)  # type: ignore[call-arg]
    return GladiaEngine(config, backoff=Backoff(initial=0.02, maximum=0.1), **kwargs)


# ============================================================================================ Gladia


async def test_gladia_connection_killed_twice_mid_call_loses_no_frame() -> None:
    async with FakeGladia(api_key=KEY, script=SCRIPT, post_processing_delay=0.02) as fake:
        fake.drop_when(12000, code=1011)  # first drop: Gladia-side error close, frames in flight
        engine = gladia(fake.url)
        async with Run(engine.open(BOTH)) as run:
            await wait_for(lambda: connected(fake))
            await run.play({IN: 1.5, OUT: 1.5}, pause=0)
            mid = run.session.counters
            assert audio_balance(mid) == 0 and mid[BYTES_PENDING] == mid["bytes_held"] > 0
            session = next(iter(fake.sessions.values()))
            await wait_for(lambda: session.bytes_received >= 24000 and session.connections == 2)
            await fake.drop(session.id, code=1012)  # second drop: "service restart"
            await run.play({IN: 1.5, OUT: 1.5})  # the rest of the call (1.5 s → 3 s)
            await run.finish()
        await engine.shutdown()

    assert script_finals(run) == SCRIPT_FINALS  # complete transcript
    assert [e.code for e in run.errors] == ["gladia.disconnected", "gladia.disconnected"]
    assert all(e.retrying for e in run.errors)
    assert session.connections == 3 and len(fake.sessions) == 1
    assert bytes(session.audio) == run.expected_stream()  # zero lost, none duplicated
    counters = run.session.counters
    assert counters["reconnects"] == counters[RESTARTS] == 2 and counters["bytes_resent"] > 0
    assert_reconciled(counters, fed=len(run.fed[IN]) + len(run.fed[OUT]))
    assert counters[BYTES_DELIVERED] == 2 * 3 * 8000


@pytest.mark.parametrize("status", [503, 429])
async def test_gladia_post_failing_at_call_start_then_recovering(status: int) -> None:
    async with FakeGladia(api_key=KEY, script=SCRIPT, post_processing_delay=0.02) as fake:
        fake.fail_next(status, count=3)
        engine = gladia(fake.url)
        async with Run(engine.open(BOTH)) as run:
            await run.play({IN: SECONDS, OUT: SECONDS})  # accepted and buffered meanwhile
            await run.finish()
        await engine.shutdown()
    assert script_finals(run) == SCRIPT_FINALS
    assert [e.retrying for e in run.errors] == [True]
    counters = run.session.counters
    assert counters["post_attempts"] == 4 and counters["sessions"] == 1 and counters[RESTARTS] == 0
    assert_reconciled(counters, fed=48000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_gladia_unreachable_for_a_while_at_call_start() -> None:
    port = _free_port()
    engine = gladia(f"http://127.0.0.1:{port}")  # connection refused until the fake starts
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 1.0, OUT: 1.0})
        await asyncio.sleep(0.4)
        async with FakeGladia(api_key=KEY, script=SCRIPT, port=port, post_processing_delay=0.02) as fake:
            await run.play({IN: 2.0, OUT: 2.0})
            await run.finish()
    await engine.shutdown()
    assert script_finals(run) == SCRIPT_FINALS
    assert {(e.code, e.retrying) for e in run.errors} == {("gladia.network", True)}
    assert run.session.counters["post_attempts"] >= 2 and fake.posts == 1
    assert_reconciled(run.session.counters, fed=48000)


async def test_gladia_session_lost_for_good_continues_in_a_new_session() -> None:
    async with FakeGladia(api_key=KEY, script=SCRIPT, post_processing_delay=0.02) as fake:
        engine = gladia(fake.url)
        async with Run(engine.open(BOTH)) as run:
            await wait_for(lambda: connected(fake))
            await run.play({IN: 1.5, OUT: 1.5})
            first = next(iter(fake.sessions.values()))
            await wait_for(lambda: first.bytes_received == 24000)
            first.ended = True  # expired at Gladia: resuming its URL is refused (HTTP 403)
            await fake.drop(first.id, code=1011)
            await run.play({IN: 1.5, OUT: 1.5})
            await run.finish()
        await engine.shutdown()

    assert [(e.code, e.retrying) for e in run.errors] == [
        ("gladia.disconnected", True),
        ("gladia.session_lost", True),
    ]
    second = [s for s in fake.sessions.values() if s is not first]
    assert len(second) == 1 and second[0].ended
    # the call's audio is split between the two sessions: nothing lost, nothing sent twice
    assert bytes(first.audio) + bytes(second[0].audio) == run.expected_stream()
    counters = run.session.counters
    assert counters["sessions"] == 2 and counters[RESTARTS] == 1
    assert_reconciled(counters, fed=48000)
    # the first session's transcript is as it was; the second's is moved onto the call's clock
    finals = {e.utterance_id: e for e in run.transcripts if e.is_final}
    assert finals["inbound:00_00000000"].text == "hello from the caller"
    later = [e for e in run.transcripts if e.utterance_id.endswith("-s2")]
    assert later and all(e.start >= 1.5 for e in later)
    assert finals["inbound:00_00000000-s2"].start == pytest.approx(1.5 + 0.2)


async def test_gladia_every_drop_is_counted_with_its_reason() -> None:
    config = Settings(_env_file=None, gladia_api_key=KEY, gladia_api_url=f"http://127.0.0.1:{_free_port()}")  # type: ignore[call-arg]
    engine = GladiaEngine(config, backoff=Backoff(0.05, 0.05), max_buffer_seconds=0.5)
    async with Run(engine.open(BOTH)) as run:
        await run.play({IN: 2.0, OUT: 2.0})  # Gladia unreachable: 0.5 s per track fit in the buffer
        await run.finish(timeout=0.1)
        run.session.feed(IN, b"\xff" * FRAME)  # after finish
    counters = run.session.counters
    assert [e.code for e in run.errors if e.code == "gladia.buffer_full"] == ["gladia.buffer_full"]
    full = counters["bytes_dropped.buffer_full"]
    assert full > 0
    assert_reconciled(
        counters,
        fed=32000 + FRAME,
        dropped={"buffer_full": full, "drain_timeout": 32000 - full, "closed": FRAME},
    )


async def test_gladia_refusing_the_call_for_good_drops_its_audio_visibly() -> None:
    async with FakeGladia(api_key="another-key") as fake:
        engine = gladia(fake.url)  # wrong key: 401, not retried
        async with Run(engine.open(BOTH)) as run:
            await run.play({IN: 1.0, OUT: 1.0})
            await run.finish()
        await engine.shutdown()
    assert [e.code for e in run.errors] == ["gladia.unauthorized"]
    assert_reconciled(run.session.counters, fed=16000, dropped={"engine_failed": 16000})


async def test_gladia_late_and_ignored_audio_is_counted() -> None:
    async with FakeGladia(api_key=KEY, script=SCRIPT, post_processing_delay=0.02) as fake:
        engine = gladia(fake.url)
        async with Run(engine.open(BOTH)) as run:
            await run.play({IN: 1.0})  # the agent's track is silent for a second: padded after 0.2 s
            await run.play({OUT: 1.0})  # …then arrives late: the padded part of it cannot be used
            await run.finish()
        single = engine.open(CallInfo("CA2", "MZ2", tracks=(IN,)))
        await single.start()
        single.feed(OUT, b"\x55" * FRAME)  # not a track of this stream
        await single.aclose()
        await engine.shutdown()
    counters = run.session.counters
    late = counters["bytes_dropped.late"]
    assert late == 8000 - 200 * 8
    assert_reconciled(counters, fed=16000, dropped={"late": late})
    assert_reconciled(single.counters, fed=FRAME, dropped={"ignored_track": FRAME})


# ============================================================================================ local


def ulaw(name: str, lead: float = 0.3, trail: float = 1.0) -> bytes:
    """A fixture as Twilio sends it: whole 20 ms frames."""
    pad = bytes([SILENCE])
    audio = pad * int(8000 * lead) + wav_to_ulaw(AUDIO / f"{name}.wav") + pad * int(8000 * trail)
    return audio + pad * (-len(audio) % FRAME)


CONVERSATION = ulaw("kathleen_a0010") + ulaw("lj001_0004") + ulaw("kathleen_a0019")


class StubDecoder:
    """A decoder without a model: the text says how long the audio was (in 100 ms steps)."""

    language = "en"

    def decode(
        self, audio: np.ndarray, *, beam: int, min_window: float, word_timestamps: bool = False
    ) -> Decoded:
        tenths = round(len(audio) / 1600)
        words = (WordTiming("audio", 0.0, 0.1, 0.9), WordTiming(f"{tenths}", 0.1, 0.2, 0.9))
        return Decoded(f"audio {tenths}", words if word_timestamps else (), 0.01, -0.2, 2)


class WorkerKilled(BaseException):
    """Raised inside a decode thread: it does not catch it, so the thread dies."""


class FlakyDecoder:
    """Wraps a decoder; the ``n``-th final (word-timed) decode of ``audio`` raises what
    ``fail(n, audio)`` returns. Speculative finals count too: one that fails and is not reused
    is simply not used, so ``failures`` may exceed the restarts."""

    def __init__(self, inner: Decoder, fail: Callable[[int, np.ndarray], BaseException | None]) -> None:
        self.inner = inner
        self.language = inner.language
        self._fail = fail
        self._lock = threading.Lock()
        self.finals = 0
        self.failures = 0

    def decode(
        self, audio: np.ndarray, *, beam: int, min_window: float, word_timestamps: bool = False
    ) -> Decoded:
        if word_timestamps:
            with self._lock:
                self.finals += 1
                exc = self._fail(self.finals, audio)
                if exc is not None:
                    self.failures += 1
            if exc is not None:
                raise exc
        return self.inner.decode(audio, beam=beam, min_window=min_window, word_timestamps=word_timestamps)


def local_engine(decoder: Decoder, **kwargs: Any) -> LocalEngine:
    settings = Settings(_env_file=None, local_workers=2)  # type: ignore[call-arg]
    kwargs.setdefault("retry_backoff", (0.01, 0.05))
    return LocalEngine(settings, decoder=decoder, **kwargs)


@pytest.fixture
async def stub_engine() -> AsyncIterator[LocalEngine]:
    engine = local_engine(StubDecoder())
    await engine.startup()
    yield engine
    await engine.shutdown()


async def stream(
    session: EngineSession,
    tracks: dict[Track, bytes],
    *,
    speedup: float | None = None,
    finish: bool = True,
    at: Callable[[float], Any] | None = None,
) -> list[EngineOutput]:
    """Feed ``tracks`` side by side in 20 ms frames (as fast as possible unless ``speedup``), then
    finish; ``at(seconds)`` is awaited, if given, every second of audio."""
    await session.start()
    events: list[EngineOutput] = []

    async def collect() -> None:
        async for event in session.events():
            events.append(event)

    collector = asyncio.create_task(collect())
    for i, offset in enumerate(range(0, max(len(a) for a in tracks.values()), FRAME)):
        for track, audio in tracks.items():
            if offset < len(audio):
                session.feed(track, audio[offset : offset + FRAME])
        if speedup is not None:
            await asyncio.sleep(0.02 / speedup)
        elif i % 10 == 9:
            await asyncio.sleep(0)
        if at is not None and i % 50 == 49:
            await at((i + 1) / 50)
    if finish:
        await session.finish(timeout=20)
        await collector
    return events


def finals(events: list[EngineOutput]) -> list[TranscriptEvent]:
    return [e for e in events if isinstance(e, TranscriptEvent) and e.is_final]


def errors(events: list[EngineOutput]) -> list[CallError]:
    return [e for e in events if isinstance(e, CallError)]


def spans(events: list[EngineOutput]) -> list[tuple[str, str, float, float]]:
    return [(e.track.value, e.text, e.start, e.end) for e in finals(events)]


async def test_local_counters_reconcile_without_faults(stub_engine: LocalEngine) -> None:
    session = stub_engine.open(CallInfo("CA1", "MZ1", tracks=(IN, OUT)))
    events = await stream(session, {IN: CONVERSATION, OUT: ulaw("kathleen_a0019", lead=1.0)})
    assert len(finals(events)) >= 4 and errors(events) == []
    counters = session.counters
    assert counters[RESTARTS] == 0
    assert_reconciled(counters, fed=len(CONVERSATION) + len(ulaw("kathleen_a0019", lead=1.0)))


async def test_local_failed_final_decodes_are_restarted_and_nothing_is_lost(stub_engine: LocalEngine) -> None:
    reference = await stream(stub_engine.open(CallInfo("CA0", "MZ0")), {IN: CONVERSATION})

    flaky = FlakyDecoder(
        StubDecoder(), lambda n, _: RuntimeError("decoder crashed") if n in (1, 2, 4) else None
    )
    engine = local_engine(flaky)
    await engine.startup()
    try:
        session = engine.open(CallInfo("CA1", "MZ1"))
        events = await stream(session, {IN: CONVERSATION})
    finally:
        await engine.shutdown()

    assert spans(events) == spans(reference)  # the same complete transcript, in order
    restarts = [e for e in errors(events) if e.code == "local.restart"]
    assert 1 <= len(restarts) <= flaky.failures == 3 and all(e.retrying for e in restarts)
    assert {e.code for e in errors(events)} == {"local.restart"}
    assert session.counters[RESTARTS] == len(restarts)
    assert_reconciled(session.counters, fed=len(CONVERSATION))


async def test_local_decode_worker_thread_dying_is_replaced_and_its_final_redone(
    stub_engine: LocalEngine,
) -> None:
    reference = await stream(stub_engine.open(CallInfo("CA0", "MZ0")), {IN: CONVERSATION})
    flaky = FlakyDecoder(StubDecoder(), lambda n, _: WorkerKilled() if n in (1, 3) else None)
    engine = local_engine(flaky)
    await engine.startup()
    try:
        session = engine.open(CallInfo("CA1", "MZ1"))
        events = await stream(session, {IN: CONVERSATION})
        pool = engine._pool
        assert pool is not None and pool.restarts == 2 and pool.alive() == engine.workers
        assert engine.describe()["worker_restarts"] == 2
    finally:
        await engine.shutdown()
    assert spans(events) == spans(reference)
    assert 1 <= session.counters[RESTARTS] == len(errors(events)) <= 2
    assert all(e.code == "local.restart" for e in errors(events))
    assert_reconciled(session.counters, fed=len(CONVERSATION))


async def test_local_decoder_failing_for_good_drops_that_audio_visibly_and_the_call_goes_on() -> None:
    # the long middle utterance (lj001_0004, > 5 s) always makes the decoder fail
    flaky = FlakyDecoder(
        StubDecoder(), lambda _, audio: RuntimeError("poisoned") if len(audio) > 5 * 16000 else None
    )
    engine = local_engine(flaky, max_decode_attempts=3)
    await engine.startup()
    try:
        session = engine.open(CallInfo("CA1", "MZ1"))
        events = await stream(session, {IN: CONVERSATION})
    finally:
        await engine.shutdown()
    codes = [e.code for e in errors(events)]
    assert codes == ["local.restart", "local.restart", "local.decode_failed"]
    assert len(finals(events)) >= 2  # the later utterances are transcribed
    counters = session.counters
    lost = counters["bytes_dropped.engine_failed"]
    assert 0 < lost < len(CONVERSATION) // 2
    assert_reconciled(counters, fed=len(CONVERSATION), dropped={"engine_failed": lost})


async def test_local_call_opened_before_the_engine_is_ready_is_held_then_transcribed(
    stub_engine: LocalEngine,
) -> None:
    reference = await stream(stub_engine.open(CallInfo("CA0", "MZ0")), {IN: CONVERSATION})

    engine = local_engine(StubDecoder())  # startup() not run yet: the model is "loading"
    session = engine.open(CallInfo("CA1", "MZ1"))

    async def load_after_4s(seconds: float) -> None:
        if seconds == 4.0:
            await engine.startup()

    try:
        events = await stream(session, {IN: CONVERSATION}, at=load_after_4s)
    finally:
        await engine.shutdown()
    assert spans(events) == spans(reference)
    assert errors(events) == []
    assert 4 * 8000 <= session.counters["replayed_bytes"] <= 6 * 8000  # held, then caught up
    assert_reconciled(session.counters, fed=len(CONVERSATION))


async def test_local_engine_not_ready_beyond_the_buffer_drops_the_oldest_and_keeps_the_clock(
    stub_engine: LocalEngine,
) -> None:
    head = bytes([SILENCE]) * 8000 * 3  # 3 s of silence, then speech
    reference = await stream(stub_engine.open(CallInfo("CA0", "MZ0")), {IN: head + CONVERSATION})

    engine = local_engine(StubDecoder(), buffer_seconds=1.0)
    session = engine.open(CallInfo("CA1", "MZ1"))

    async def load_after_3s(seconds: float) -> None:
        if seconds == 3.0:
            await engine.startup()

    try:
        events = await stream(session, {IN: head + CONVERSATION}, at=load_after_3s)
    finally:
        await engine.shutdown()
    assert spans(events) == spans(reference)  # the dropped audio stood in as silence: same times
    assert [(e.code, e.retrying) for e in errors(events)] == [("local.buffer_full", True)]
    full = session.counters["bytes_dropped.buffer_full"]
    assert 2 * 8000 <= full <= 3 * 8000  # the oldest, beyond 1 s held, until the engine caught up
    assert_reconciled(session.counters, fed=len(head + CONVERSATION), dropped={"buffer_full": full})


async def test_local_engine_never_ready_drops_the_held_audio_at_the_end() -> None:
    engine = local_engine(StubDecoder())
    session = engine.open(CallInfo("CA1", "MZ1"))
    session.feed(IN, b"\x55" * 4 * FRAME)
    await session.start()
    events: list[EngineOutput] = []

    async def collect() -> None:
        async for event in session.events():
            events.append(event)

    collector = asyncio.create_task(collect())
    await session.finish(timeout=0.1)
    await collector
    assert [e.code for e in errors(events)] == ["local.unavailable"]
    assert_reconciled(session.counters, fed=4 * FRAME, dropped={"engine_failed": 4 * FRAME})


async def test_local_aclose_mid_utterance_counts_what_it_abandons(stub_engine: LocalEngine) -> None:
    session = stub_engine.open(CallInfo("CA1", "MZ1"))
    audio = ulaw("lj001_0004", trail=0)[: 8000 * 3]
    await stream(session, {IN: audio}, finish=False)
    session.feed(IN, b"\x55" * 100)  # a fragment of a frame, never processed
    await session.aclose()
    session.feed(IN, b"\x55" * FRAME)
    counters = session.counters
    aborted = counters["bytes_dropped.aborted"]
    assert aborted > 8000  # the utterance in progress, and the fragment
    assert_reconciled(counters, fed=len(audio) + 100 + FRAME, dropped={"aborted": aborted, "closed": FRAME})


# --------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def whisper() -> Decoder:
    from callscribe.engines.local.decoder import WhisperDecoder
    from callscribe.engines.local.models import resolve_model

    return WhisperDecoder(resolve_model("tiny.en"), workers=2)


def words(events: list[EngineOutput], track: Track) -> list[str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    return normalise(" ".join(e.text for e in finals(events) if e.track is track)).split()


@pytest.mark.slow
async def test_local_stream_failing_mid_call_with_the_real_model_gives_the_complete_transcript(
    whisper: Decoder,
) -> None:
    from jiwer import wer

    tracks = {IN: CONVERSATION, OUT: ulaw("kathleen_a0019", lead=2.0) + ulaw("kathleen_a0010")}
    fed = sum(len(a) for a in tracks.values())
    clean_engine = local_engine(whisper)
    await clean_engine.startup()
    try:
        clean = await stream(clean_engine.open(CallInfo("CA0", "MZ0", tracks=(IN, OUT))), tracks, speedup=5)
    finally:
        await clean_engine.shutdown()

    # decodes 2 and 3 raise, decode 5 kills its worker thread: all mid-call
    def fault(n: int, _: np.ndarray) -> BaseException | None:
        return RuntimeError("decoder crashed") if n in (2, 3) else WorkerKilled() if n == 5 else None

    flaky = FlakyDecoder(whisper, fault)
    engine = local_engine(flaky)
    await engine.startup()
    try:
        session = engine.open(CallInfo("CA1", "MZ1", tracks=(IN, OUT)))
        events = await stream(session, tracks, speedup=5)
    finally:
        await engine.shutdown()

    assert flaky.failures == 3
    assert 1 <= session.counters[RESTARTS] <= 3
    assert {e.code for e in errors(events)} == {"local.restart"}
    for track in (IN, OUT):
        expected, got = words(clean, track), words(events, track)
        assert expected and wer(" ".join(expected), " ".join(got)) <= 0.1, (expected, got)
    assert_reconciled(session.counters, fed=fed)
