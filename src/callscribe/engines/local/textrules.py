"""Rules on decoded text: is it a hallucination, does it end in a number, does it look finished."""

from __future__ import annotations

import re

_NUMBERS = (
    "zero oh o one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand double triple"
)
_NUMBER_WORDS = frozenset(_NUMBERS.split())
# What Whisper is known to write for silence, breath or line noise (its training data's subtitles).
_SILENCE_PHRASES = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "bye",
    }
)
_NON_WORD = re.compile(r"[^\w\s']+")
# Whisper's own no-speech rule (transcribe(): no_speech_threshold=0.6 with log_prob_threshold=-1).
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
# A stock phrase decoded from less voiced audio than this is taken for noise (a real "thank you" has more).
MIN_VOICED_FOR_STOCK_PHRASE = 0.3


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def is_hallucination(text: str, no_speech_prob: float, avg_logprob: float, voiced_seconds: float) -> bool:
    """True when a decode should not become a transcript: empty, no speech, or a stock phrase on noise."""
    words = normalise(text)
    if not words:
        return True
    if no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
        return True
    return words in _SILENCE_PHRASES and (
        voiced_seconds < MIN_VOICED_FOR_STOCK_PHRASE or no_speech_prob > NO_SPEECH_PROB
    )


def ends_with_number(text: str) -> bool:
    """True when the last word is a digit group or a number word: the speaker may be mid-number."""
    words = normalise(text).split()
    return bool(words) and (any(c.isdigit() for c in words[-1]) or words[-1] in _NUMBER_WORDS)


def looks_complete(text: str) -> bool:
    """True when the text ends a sentence (., ?, !) and not inside a number such as "4 5."."""
    return text.rstrip().endswith((".", "?", "!")) and not ends_with_number(text)


def trim_repetition(text: str) -> str:
    """Cut a greedy decoding loop ("4 0 9 7 9 7 9 7 9 7 …") back to its first occurrence.

    A pattern of ``p`` words repeated at least ``_MIN_REPEATS[p]`` times in a row up to the end of
    the text (a last, unfinished repeat allowed) is a loop; the thresholds leave room for real
    repeats such as "double oh seven" or "8 8" in a number.
    """
    words = text.split()
    keys = [normalise(w) for w in words]
    n = len(keys)
    for period, min_repeats in _MIN_REPEATS.items():
        for start in range(n - period * min_repeats + 1):
            pattern = keys[start : start + period]
            end = start + period
            while keys[end : end + period] == pattern:
                end += period
            rest = keys[end:]
            if (end - start) // period >= min_repeats and rest == pattern[: len(rest)]:
                return " ".join(words[: start + period])
    return _trim_doubled_sentence(words, keys)


def _trim_doubled_sentence(words: list[str], keys: list[str]) -> str:
    """"Will we ever forget it? Will we ever forget it?" → once: tiny.en's commonest loop.

    Only a whole closing sentence of 3+ words, 2+ of them not number words, repeated right after itself:
    digits ("one one one one") and short real repeats ("Hello? Hello?") are kept.
    """
    n = len(keys)
    for period in range(3, n // 2 + 1):
        first, second = keys[n - 2 * period : n - period], keys[n - period :]
        starts_sentence = n == 2 * period or words[n - 2 * period - 1].endswith((".", "?", "!"))
        if (
            first == second
            and starts_sentence
            and words[n - period - 1].endswith((".", "?", "!"))
            and sum(k.isalpha() and k not in _NUMBER_WORDS for k in first) >= 2
        ):
            return " ".join(words[: n - period])
    return " ".join(words)


_MIN_REPEATS = {1: 5, 2: 4, 3: 3, 4: 3, 5: 3, 6: 3}
