"""Transcript renderings: timestamp formats, speaker labels, cue structure, ordering, escaping."""

from __future__ import annotations

import orjson
import pytest

from callscribe.transcripts.formats import render, srt_time, to_srt, to_text, to_vtt, vtt_time

UTTERANCES = [
    # stored per track, so not in speaking order
    {
        "speaker": "caller",
        "track": "inbound",
        "text": "I have no idea, replied Philip.",
        "start": 3.8,
        "end": 6.072,
    },
    {
        "speaker": "agent",
        "track": "outbound",
        "text": "Lord, but I'm glad to see you again, Phil.",
        "start": 0.5,
        "end": 3.265,
    },
]


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (1.234, "00:00:01,234", "00:00:01.234"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounds to the millisecond, carries
        (3723.5, "01:02:03,500", "01:02:03.500"),
        (360_000.001, "100:00:00,001", "100:00:00.001"),
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert srt_time(seconds) == srt and vtt_time(seconds) == vtt


def test_plain_text_is_labelled_and_in_speaking_order() -> None:
    assert to_text(UTTERANCES) == (
        "[00:00:00.500 - 00:00:03.265] Agent: Lord, but I'm glad to see you again, Phil.\n"
        "[00:00:03.800 - 00:00:06.072] Caller: I have no idea, replied Philip.\n"
    )


def test_srt_cues() -> None:
    assert to_srt(UTTERANCES) == (
        "1\n00:00:00,500 --> 00:00:03,265\nAgent: Lord, but I'm glad to see you again, Phil.\n"
        "\n"
        "2\n00:00:03,800 --> 00:00:06,072\nCaller: I have no idea, replied Philip.\n"
    )


def test_vtt_cues_use_voice_spans() -> None:
    assert to_vtt(UTTERANCES) == (
        "WEBVTT\n"
        "\n"
        "1\n00:00:00.500 --> 00:00:03.265\n<v Agent>Lord, but I'm glad to see you again, Phil.</v>\n"
        "\n"
        "2\n00:00:03.800 --> 00:00:06.072\n<v Caller>I have no idea, replied Philip.</v>\n"
    )


def test_cue_text_cannot_break_the_file() -> None:
    nasty = [{"speaker": "a<b>", "text": "x --> y\n\nz & <i>", "start": 2.0, "end": 1.0}]
    vtt = to_vtt(nasty)
    assert "<v A&lt;b>x --&gt; y z &amp; &lt;i&gt;</v>" in vtt
    assert "00:00:02.000 --> 00:00:02.001" in vtt  # a cue ends after it starts
    srt = to_srt(nasty)
    assert srt.count("\n\n") == 0 and "A<b>: x --> y z & <i>" in srt


def test_empty_and_blank_utterances() -> None:
    blank = [{"speaker": "caller", "text": "  ", "start": 0, "end": 1}]
    assert to_text([]) == "" and to_srt(blank) == "" and to_vtt([]) == "WEBVTT\n"


def test_speaker_falls_back_to_track() -> None:
    assert to_text([{"track": "inbound", "text": "hi", "start": 0, "end": 1}]).endswith("Inbound: hi\n")


def test_render_json_and_unknown_format() -> None:
    body = orjson.loads(render("json", UTTERANCES, {"call_sid": "CA1"}))
    assert body["call"] == {"call_sid": "CA1"}
    assert [u["speaker"] for u in body["utterances"]] == ["agent", "caller"]
    assert render("srt", UTTERANCES).startswith(b"1\n00:00:00,500")
    with pytest.raises(ValueError, match="unknown transcript format"):
        render("docx", UTTERANCES)
