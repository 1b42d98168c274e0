"""End-of-call notes: talk time, silence, overlap, triggers, topics, first and last exchanges.

:class:`NotesBuilder` watches every event of every call (sans-I/O) and, when a call ends, builds a
JSON-ready dict of notes (fields in ``docs/intelligence.md``). :func:`summarize` optionally asks an
OpenAI-compatible ``/chat/completions`` endpoint for a short written summary; it is never required
and returns ``None`` on any failure.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from callscribe.events import CallEnded, CallError, CallStarted, Event, TranscriptEvent, TriggerFired

log = logging.getLogger(__name__)

MAX_INTERVALS = 5_000  # per call: about 3 hours of conversation; later ones still count, without overlap
MAX_TOPIC_CHARS = 12_000  # text kept for keyword extraction: ~15 minutes of speech, ~0.2 s of YAKE
MAX_TRIGGERS = 200  # listed per call; the total is always counted
MAX_EXCHANGE_CHARS = 500  # text of each first/last exchange
MAX_CALLS = 10_000  # calls followed at once when build() is never called for some
TOPICS = 8
EXCHANGES = 2

_MASK = re.compile(r"\[[^\[\]]*\]")  # redaction masks such as "[card ending 1111]": not topics
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")  # words for de-duplicating keywords


@dataclass(frozen=True, slots=True, order=True)
class _Utterance:
    start: float
    end: float
    speaker: str
    text: str


@dataclass(slots=True)
class _Call:
    """Everything kept about one call between its first event and :meth:`NotesBuilder.build`."""

    started_at: float | None = None
    speakers: list[str] = field(default_factory=list)
    intervals: list[tuple[float, float, str]] = field(default_factory=list)
    talk: dict[str, float] = field(default_factory=dict)  # per speaker: speech beyond MAX_INTERVALS
    count: dict[str, int] = field(default_factory=dict)
    finals: dict[str, float] = field(
        default_factory=dict
    )  # utterance id → start: a replayed final counts once
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # triggers awaiting their final
    first: list[_Utterance] = field(default_factory=list)  # the earliest finals by start time
    last: list[_Utterance] = field(default_factory=list)  # the latest finals by start time
    text: list[str] = field(default_factory=list)
    text_chars: int = 0
    triggers: list[dict[str, Any]] = field(default_factory=list)
    triggers_total: int = 0
    errors: int = 0
    last_end: float = 0.0


class NotesBuilder:
    """Follows calls through their events and builds each call's notes when it ends."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}

    def _call(self, call_sid: str) -> _Call:
        call = self._calls.get(call_sid)
        if call is None:
            if len(self._calls) >= MAX_CALLS:  # a call whose notes were never built: drop the oldest
                self._calls.pop(next(iter(self._calls)))
            call = self._calls[call_sid] = _Call()
        return call

    def observe(self, event: Event) -> None:
        """Take note of one event: finals, triggers, the call's start and errors (partials are ignored)."""
        if isinstance(event, TranscriptEvent):
            if event.is_final:
                self._final(event)
        elif isinstance(event, TriggerFired):
            self._trigger(event)
        elif isinstance(event, CallStarted):
            call = self._call(event.call_sid)
            call.started_at = event.at
            for track in event.call.tracks:
                speaker = event.call.speaker(track)
                if speaker not in call.speakers:
                    call.speakers.append(speaker)
        elif isinstance(event, CallError):
            self._call(event.call_sid).errors += 1

    def _final(self, event: TranscriptEvent) -> None:
        text = event.text.strip()
        if not text:
            return  # an utterance the engine dropped: no speech to count
        call = self._call(event.call_sid)
        if event.utterance_id in call.finals:
            return
        if len(call.finals) < MAX_INTERVALS:
            call.finals[event.utterance_id] = event.start
        for trigger in call.pending.pop(event.utterance_id, ()):
            trigger["time"] = round(event.start, 2)
        speaker = event.speaker
        if speaker not in call.speakers:
            call.speakers.append(speaker)
        call.count[speaker] = call.count.get(speaker, 0) + 1
        start, end = event.start, max(event.start, event.end)
        call.last_end = max(call.last_end, end)
        if len(call.intervals) < MAX_INTERVALS:
            call.intervals.append((start, end, speaker))
        else:
            call.talk[speaker] = call.talk.get(speaker, 0.0) + (end - start)
        utterance = _Utterance(start, end, speaker, text[:MAX_EXCHANGE_CHARS])
        # Finals of the two tracks arrive interleaved and a little out of order: keep both ends sorted.
        bisect.insort(call.first, utterance)
        del call.first[EXCHANGES:]
        bisect.insort(call.last, utterance)
        del call.last[:-EXCHANGES]
        if call.text_chars < MAX_TOPIC_CHARS:
            clean = " ".join(_MASK.sub(" ", text).split())
            if clean:
                clean = clean[: MAX_TOPIC_CHARS - call.text_chars]
                call.text.append(clean)
                call.text_chars += len(clean) + 1

    def _trigger(self, event: TriggerFired) -> None:
        call = self._call(event.call_sid)
        call.triggers_total += 1
        if len(call.triggers) >= MAX_TRIGGERS:
            return
        start = call.finals.get(event.utterance_id)
        trigger = {
            "rule_id": event.rule_id,
            "severity": event.severity,
            "utterance_id": event.utterance_id,
            "speaker": event.speaker,
            "matched": event.matched,
            # Seconds into the call: the utterance's start on the audio clock, known once its final is.
            "time": None if start is None else round(start, 2),
            "at": event.at,  # wall clock when it fired
        }
        call.triggers.append(trigger)
        if start is None:
            call.pending.setdefault(event.utterance_id, []).append(trigger)

    def forget(self, call_sid: str) -> None:
        """Drop a call without building its notes."""
        self._calls.pop(call_sid, None)

    def build(self, ended: CallEnded, redactions: dict[str, int] | None = None) -> dict[str, Any]:
        """The notes of the call ``ended`` closes (JSON-ready; ``summary`` is None), then forget it."""
        call = self._calls.pop(ended.call_sid, None) or _Call()
        for triggers in call.pending.values():  # no final came (or it was empty): wall clock since the start
            for trigger in triggers:
                if call.started_at is not None:
                    trigger["time"] = round(max(0.0, trigger["at"] - call.started_at), 2)
        duration = max(float(ended.duration), call.last_end, 0.0)
        by_speaker: dict[str, list[tuple[float, float]]] = {s: [] for s in call.speakers}
        for start, end, speaker in call.intervals:
            by_speaker.setdefault(speaker, []).append((start, end))
        merged = {speaker: _union(spans) for speaker, spans in by_speaker.items()}
        talk = {
            speaker: round(_length(spans) + call.talk.get(speaker, 0.0), 2)
            for speaker, spans in merged.items()
        }
        anyone, overlap = _coverage(list(merged.values()))
        anyone += sum(call.talk.values())  # speech beyond the interval cap: assumed not overlapping
        silence = max(0.0, duration - anyone)
        return {
            "call_sid": ended.call_sid,
            "stream_sid": ended.stream_sid,
            "reason": ended.reason,
            "started_at": call.started_at,
            "ended_at": ended.at,
            "duration": round(duration, 2),
            "speakers": list(merged),
            "talk_time": talk,
            "utterances": {speaker: call.count.get(speaker, 0) for speaker in merged},
            "silence_time": round(silence, 2),
            "silence_share": _share(silence, duration),
            "overlap_time": round(overlap, 2),
            "overlap_share": _share(overlap, duration),
            "triggers": call.triggers,
            "triggers_total": call.triggers_total,
            "redactions": dict(sorted((redactions or {}).items())),
            "errors": call.errors,
            "topics": topics(" ".join(call.text)),
            "first_exchanges": [_exchange(u) for u in call.first],
            "last_exchanges": [_exchange(u) for u in call.last],
            "summary": None,
        }


def _exchange(u: _Utterance) -> dict[str, Any]:
    return {"speaker": u.speaker, "text": u.text, "start": round(u.start, 2), "end": round(u.end, 2)}


def _share(part: float, whole: float) -> float:
    return round(min(1.0, part / whole), 3) if whole > 0 else 0.0


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, non-overlapping intervals covering ``spans`` (one speaker's utterances may touch)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def _coverage(speakers: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """Seconds when at least one speaker talks, and when two or more talk at once (a sweep)."""
    edges = sorted(
        [(start, 1) for spans in speakers for start, _ in spans]
        + [(end, -1) for spans in speakers for _, end in spans]
    )
    anyone = overlap = 0.0
    active = 0
    previous = 0.0
    for at, step in edges:
        if active >= 1:
            anyone += at - previous
        if active >= 2:
            overlap += at - previous
        active += step
        previous = at
    return anyone, overlap


def _stem(word: str) -> str:
    # Just enough to treat "subscription" and "subscriptions" as one topic.
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def topics(text: str, top: int = TOPICS) -> list[str]:
    """The main keywords of ``text`` (YAKE, up to 2-word phrases), lowercase, without near-duplicates."""
    text = " ".join(_MASK.sub(" ", text).split())
    if not text:
        return []
    import yake  # imported on first use: it pulls in its own NLP stack, not needed until a call ends

    try:
        # Not its own dedup argument: renamed in yake 0.6 (dedupLim → dedup_lim); ours follows.
        extractor = yake.KeywordExtractor(lan="en", n=2, top=top * 3)
        candidates = [keyword for keyword, _ in extractor.extract_keywords(text)]
    except Exception:  # notes must not fail a call's end over a keyword library's corner case
        log.exception("topic extraction failed")
        return []
    chosen: list[str] = []
    chosen_words: list[set[str]] = []
    for keyword in candidates:
        keyword = " ".join(keyword.lower().split())
        words = {_stem(w) for w in _WORD.findall(keyword)}
        if not words or all(len(w) < 3 for w in words):
            continue
        # Keep one of "internet", "internet service" and "internet services": whichever ranks first.
        if any(words <= other or other <= words for other in chosen_words):
            continue
        chosen.append(keyword)
        chosen_words.append(words)
        if len(chosen) == top:
            break
    return chosen


# --- Optional written summary ----------------------------------------------------------------

MAX_TRANSCRIPT_CHARS = 12_000  # what a small model's context comfortably takes

_INSTRUCTIONS = (
    "You write concise notes for a call-centre agent after a phone call. From the call facts and the "
    "transcript, write 3 to 5 short sentences: why the caller called, what was done or agreed, and any "
    "follow-up. Do not invent facts; never restore masked text such as [card ending 1111]."
)


async def summarize(
    notes: dict[str, Any],
    transcript: str,
    *,
    base_url: str,
    model: str,
    api_key: str | None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 20,
) -> str | None:
    """A written summary from an OpenAI-compatible ``/chat/completions`` endpoint, or None on any failure.

    ``transcript`` must already be redacted: it leaves the machine. ``client`` is used as is (and not
    closed) when given, e.g. a shared client or one on an ``httpx.MockTransport`` in tests.
    """
    url = base_url.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    facts = {k: v for k, v in notes.items() if k not in {"summary", "first_exchanges", "last_exchanges"}}
    if len(transcript) > MAX_TRANSCRIPT_CHARS:  # keep both ends: the reason for the call and the outcome
        half = MAX_TRANSCRIPT_CHARS // 2
        transcript = f"{transcript[:half]}\n[…]\n{transcript[-half:]}"
    body = {
        "model": model,
        "temperature": 0.2,
        "max_tokens": 300,
        "messages": [
            {"role": "system", "content": _INSTRUCTIONS},
            {
                "role": "user",
                "content": f"Call facts (JSON):\n{json.dumps(facts, ensure_ascii=False)}\n\nTranscript:\n{transcript}",
            },
        ],
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    own = client is None
    http = client or httpx.AsyncClient()
    try:
        response = await http.post(url, json=body, headers=headers, timeout=timeout)
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        if not isinstance(content, str) or not content.strip():
            raise ValueError("empty summary")
        return content.strip()
    except Exception as exc:  # a summary is a nicety: any failure means "no summary", never a failed call
        reason = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else repr(exc)
        log.warning(
            "call %s: no summary from %s (model %s): %s", notes.get("call_sid", "?"), url, model, reason
        )
        return None
    finally:
        if own:
            await http.aclose()
