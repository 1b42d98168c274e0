"""Pure renderings of a call's final utterances: labelled plain text, SRT and WebVTT cues.

An utterance is any mapping with ``speaker`` (or ``track``), ``text``, ``start`` and ``end`` (seconds
on the call's audio clock), e.g. a row of ``Store.utterances`` or an ``event_to_dict`` final.
Utterances are ordered by start time (then end), so both speakers interleave as they spoke.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

Format = Literal["json", "txt", "srt", "vtt"]
FORMATS: dict[str, str] = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
_MIN_CUE = 0.001  # a cue must end after it starts (WebVTT); zero-length utterances get 1 ms


def _ms(seconds: float) -> int:
    return max(0, round(float(seconds) * 1000))


def _clock(seconds: float, sep: str) -> str:
    ms = _ms(seconds)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_time(seconds: float) -> str:
    """``00:00:01,234`` (SubRip uses a comma before the milliseconds)."""
    return _clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    """``00:00:01.234`` (WebVTT uses a full stop; hours are always written, for simplicity)."""
    return _clock(seconds, ".")


def speaker_label(utterance: Mapping[str, Any]) -> str:
    """``caller`` → ``Caller``; falls back to the track, then ``Speaker``."""
    name = str(utterance.get("speaker") or utterance.get("track") or "speaker").strip()
    return name[:1].upper() + name[1:]


def _ordered(utterances: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = [u for u in utterances if str(u.get("text") or "").strip()]
    return sorted(rows, key=lambda u: (float(u.get("start") or 0), float(u.get("end") or 0)))


def _span(u: Mapping[str, Any]) -> tuple[float, float]:
    start = max(0.0, float(u.get("start") or 0))
    return start, max(float(u.get("end") or 0), start + _MIN_CUE)


def _one_line(text: Any) -> str:
    # A blank line ends a cue in SRT and WebVTT: keep each utterance on one line.
    return " ".join(str(text).split())


def to_text(utterances: Iterable[Mapping[str, Any]]) -> str:
    """One line per utterance: ``[00:00:03.800 - 00:00:06.072] Caller: text``."""
    lines = []
    for u in _ordered(utterances):
        start, end = _span(u)
        lines.append(f"[{vtt_time(start)} - {vtt_time(end)}] {speaker_label(u)}: {_one_line(u['text'])}")
    return "\n".join(lines) + ("\n" if lines else "")


def to_srt(utterances: Iterable[Mapping[str, Any]]) -> str:
    """SubRip: numbered cues, ``Speaker: text``."""
    cues = []
    for n, u in enumerate(_ordered(utterances), 1):
        start, end = _span(u)
        cues.append(
            f"{n}\n{srt_time(start)} --> {srt_time(end)}\n{speaker_label(u)}: {_one_line(u['text'])}\n"
        )
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(utterances: Iterable[Mapping[str, Any]]) -> str:
    """WebVTT: the speaker as a voice span, ``<v Caller>text</v>``, which players label and style."""
    parts = ["WEBVTT\n"]
    for n, u in enumerate(_ordered(utterances), 1):
        start, end = _span(u)
        # '-->' may not appear in a cue identifier or payload; voice names may not hold '>'.
        voice = _vtt_escape(speaker_label(u)).replace("&gt;", "")
        text = _vtt_escape(_one_line(u["text"]))
        parts.append(f"{n}\n{vtt_time(start)} --> {vtt_time(end)}\n<v {voice}>{text}</v>\n")
    return "\n".join(parts)


def to_json(utterances: Iterable[Mapping[str, Any]], call: Mapping[str, Any] | None = None) -> bytes:
    """``{"call": …, "utterances": [...]}`` in speaking order."""
    return orjson.dumps(
        {"call": dict(call) if call else None, "utterances": [dict(u) for u in _ordered(utterances)]}
    )


def render(fmt: str, utterances: Iterable[Mapping[str, Any]], call: Mapping[str, Any] | None = None) -> bytes:
    """``utterances`` in format ``fmt`` (one of :data:`FORMATS`), as UTF-8 bytes."""
    if fmt == "json":
        return to_json(utterances, call)
    renderers = {"txt": to_text, "srt": to_srt, "vtt": to_vtt}
    if fmt not in renderers:
        raise ValueError(f"unknown transcript format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderers[fmt](utterances).encode()
