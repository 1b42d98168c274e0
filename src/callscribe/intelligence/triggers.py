"""Phrase triggers for agent assist: rules from a TOML or YAML file matched against live transcripts.

Sans-I/O apart from reading the rules file: :class:`TriggerEngine` takes :class:`TranscriptEvent`s
and returns :class:`TriggerFired` events, at most one per (call, utterance, rule), as soon as a
partial (or, failing that, the final) contains a match. The rules format and the matching are
documented in ``docs/intelligence.md``.

Matching works on normalised text (lowercase, punctuation and apostrophes dropped, number words as
digits). A phrase matches exactly on word boundaries, or tolerantly (``fuzzy`` < 100): a window of
the utterance of one word fewer to one word more than the phrase scores at least ``fuzzy`` with
:func:`rapidfuzz.fuzz.ratio`, *and* every phrase word of 4+ characters resembles a word (or two
adjacent words joined) of that window. Phrases shorter than :data:`FUZZY_MIN_CHARS` letters/digits
always match exactly: on short strings one wrong letter is already a different word.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import json
import logging
import os
import re
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rapidfuzz import fuzz, process

from callscribe.events import TranscriptEvent, TriggerFired

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")
DEFAULT_FUZZY = 85
FUZZY_MIN_CHARS = 8  # letters/digits; shorter phrases match exactly
WORD_GUARD_MIN_LEN = 4  # phrase words this long must each resemble a word of the matched window
WORD_GUARD_SCORE = 60  # "council"/"cancel" scores 61.5, "renew"/"cancel" 36
MAX_UTTERANCES_PER_CALL = 1024  # fired-rule memory per call (late duplicates of older ones may re-fire)
MAX_CALLS = 10_000  # calls whose state is kept when end_call() is never called

_RULE_KEYS = {"id", "phrases", "regex", "speakers", "fuzzy", "severity", "payload", "enabled", "description"}
_TOKEN = re.compile(r"[\w'’]+")
_APOSTROPHES = str.maketrans("", "", "'’")
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
_TEENS = ("twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# Number words as digits, on both sides of a match, so "one star" and "1 star" agree.
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_UNITS + _TEENS)} | {
    w: str(10 * i) for i, w in enumerate(_TENS, 2)
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One trigger rule, as read from the rules file (phrases kept as written)."""

    id: str
    phrases: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    speakers: frozenset[str] = frozenset()  # speaker labels or track names; empty = anyone
    fuzzy: int = DEFAULT_FUZZY  # minimum similarity 0-100; 100 = exact only
    severity: str = "info"
    payload: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    description: str = ""

    def applies_to(self, speaker: str, track: str) -> bool:
        return self.enabled and (not self.speakers or speaker in self.speakers or track in self.speakers)


# --- Normalisation ---------------------------------------------------------------------------


def _norm_token(token: str) -> str:
    token = token.lower().translate(_APOSTROPHES)
    return _NUMBER_WORDS.get(token, token)


def normalize(text: str) -> str:
    """``text`` as the matcher sees it: lowercase words, no punctuation, number words as digits."""
    return " ".join(t for t in (_norm_token(m.group()) for m in _TOKEN.finditer(text)) if t)


class _Text:
    """An utterance's normalised tokens, each mapped back to its span in the original text."""

    __slots__ = ("norm", "original", "spans", "starts", "tokens")

    def __init__(self, text: str) -> None:
        self.original = text
        self.tokens: list[str] = []
        self.spans: list[tuple[int, int]] = []
        for m in _TOKEN.finditer(text):
            token = _norm_token(m.group())
            if token:
                self.tokens.append(token)
                self.spans.append(m.span())
        self.norm = " ".join(self.tokens)
        self.starts: list[int] = []  # char offset of each token in self.norm
        offset = 0
        for token in self.tokens:
            self.starts.append(offset)
            offset += len(token) + 1

    def token_range(self, start: int, end: int) -> tuple[int, int]:
        """Tokens ``[i, j)`` covering chars ``[start, end)`` of the normalised text."""
        i = bisect.bisect_right(self.starts, start) - 1
        j = bisect.bisect_left(self.starts, end)
        return max(i, 0), max(j, i + 1)

    def original_span(self, i: int, j: int) -> str:
        """The original (redacted, punctuated) text of tokens ``[i, j)``."""
        return self.original[self.spans[i][0] : self.spans[j - 1][1]]


# --- Loading ---------------------------------------------------------------------------------


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of non-empty strings")
    return tuple(value)


def _rule(raw: Any, index: int, source: str) -> Rule:
    where = f"{source}: rule #{index + 1}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table/mapping, got {type(raw).__name__}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise ValueError(f"{where}: 'id' is required (a non-empty string)")
    where = f"{source}: rule '{rule_id}'"
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_RULE_KEYS))})"
        )
    phrases = _strings(raw.get("phrases", []), where, "phrases")
    for phrase in phrases:
        if not normalize(phrase):
            raise ValueError(f"{where}: phrase {phrase!r} has no words")
    patterns = _strings(raw.get("regex", []), where, "regex")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: bad regex {pattern!r}: {exc}") from None
    if not phrases and not patterns:
        raise ValueError(f"{where}: needs at least one of 'phrases' or 'regex'")
    speakers = frozenset(_strings(raw.get("speakers", []), where, "speakers"))
    fuzzy = raw.get("fuzzy", DEFAULT_FUZZY)
    if isinstance(fuzzy, bool) or not isinstance(fuzzy, int | float) or not 0 <= fuzzy <= 100:
        raise ValueError(f"{where}: 'fuzzy' must be a number from 0 to 100 (100 = exact), got {fuzzy!r}")
    severity = raw.get("severity", "info")
    if severity not in SEVERITIES:
        raise ValueError(f"{where}: 'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    payload = raw.get("payload", {})
    if not isinstance(payload, dict):
        raise ValueError(f"{where}: 'payload' must be a table/mapping")
    try:
        json.dumps(payload)  # it travels in events, feeds and webhooks: TOML/YAML dates would not
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: 'payload' must be JSON-serialisable ({exc})") from None
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{where}: 'enabled' must be true or false")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{where}: 'description' must be a string")
    return Rule(
        id=rule_id,
        phrases=phrases,
        regex=patterns,
        speakers=speakers,
        fuzzy=int(fuzzy) if float(fuzzy).is_integer() else fuzzy,
        severity=severity,
        payload=payload,
        enabled=enabled,
        description=description,
    )


def parse_rules(data: Any, source: str = "<rules>") -> list[Rule]:
    """Rules from already-parsed TOML/YAML data: ``{"rule": [...]}`` or ``{"rules": [...]}`` (YAML: a list too)."""
    if data is None:
        return []  # an empty YAML file: no rules
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"rule", "rules"})
        if unknown:
            raise ValueError(f"{source}: unknown top-level key(s) {', '.join(unknown)} (expected 'rule')")
        if "rule" in data and "rules" in data:
            raise ValueError(f"{source}: use either 'rule' or 'rules', not both")
        data = data.get("rule", data.get("rules", []))
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a list of rules ([[rule]] in TOML, 'rules:' in YAML)")
    rules = [_rule(raw, i, source) for i, raw in enumerate(data)]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise ValueError(f"{source}: rule '{rule.id}' is defined twice")
        seen.add(rule.id)
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of a ``.toml``, ``.yaml`` or ``.yml`` file; a ``ValueError`` names the file and rule."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read trigger rules: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        elif suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(raw)
        else:
            raise ValueError(f"{path}: trigger rules must be a .toml, .yaml or .yml file")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    return parse_rules(data, str(path))


# --- Compiled matchers -----------------------------------------------------------------------


@dataclass(slots=True)
class _Compiled:
    """Rules precompiled for one (speaker, track): exact phrases, regexes and the fuzzy phrase table."""

    exact: list[tuple[str, str]]  # (rule id, " normalised phrase ")
    regex: list[tuple[str, re.Pattern[str]]]
    fuzzy: list[str]  # normalised phrases, row order of the score matrix
    fuzzy_rule: list[str]  # rule id of each row
    fuzzy_cutoff: np.ndarray  # minimum score of each row
    fuzzy_words: list[int]  # word count of each row


def _compile(rules: list[Rule]) -> _Compiled:
    exact: list[tuple[str, str]] = []
    regexes: list[tuple[str, re.Pattern[str]]] = []
    fuzzy: list[str] = []
    owners: list[str] = []
    cutoffs: list[float] = []
    words: list[int] = []
    for rule in rules:
        for phrase in rule.phrases:
            norm = normalize(phrase)
            # Exact first for every phrase: a substring test is far cheaper than any scoring.
            exact.append((rule.id, f" {norm} "))
            if rule.fuzzy < 100 and sum(c.isalnum() for c in norm) >= FUZZY_MIN_CHARS:
                fuzzy.append(norm)
                owners.append(rule.id)
                cutoffs.append(float(rule.fuzzy))
                words.append(norm.count(" ") + 1)
        regexes.extend((rule.id, re.compile(p, re.IGNORECASE)) for p in rule.regex)
    return _Compiled(exact, regexes, fuzzy, owners, np.array(cutoffs, dtype=np.float64), words)


def _word_guard(phrase: str, window: list[str]) -> bool:
    """Every longer phrase word resembles a window word (or two adjacent ones joined: "sub scription")."""
    candidates = window + [a + b for a, b in itertools.pairwise(window)]
    return all(
        len(word) < WORD_GUARD_MIN_LEN
        or process.extractOne(word, candidates, scorer=fuzz.ratio, score_cutoff=WORD_GUARD_SCORE) is not None
        for word in phrase.split()
    )


# --- The engine ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Utterance:
    """What the engine remembers of one utterance: the rules fired, the text last matched."""

    fired: set[str] = field(default_factory=set)
    last: tuple[int, str] | None = None  # (rules generation, normalised text)


class TriggerEngine:
    """Matches rules against transcript events; fires each rule once per utterance of a call."""

    def __init__(self, path: str | Path | None = None, rules: list[Rule] | None = None) -> None:
        """Rules from ``path`` (watched by :meth:`maybe_reload`) or given directly; raises ``ValueError``."""
        if path is not None and rules is not None:
            raise ValueError("TriggerEngine: give a rules file or a list of rules, not both")
        self.path = Path(path) if path is not None else None
        self._signature: tuple[int, int] | None = None  # (mtime_ns, size) last loaded or last failed
        self._calls: dict[str, OrderedDict[str, _Utterance]] = {}
        self._rules: list[Rule] = []
        self._generation = 0  # bumped when the rules change
        self._by_id: dict[str, Rule] = {}
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        if self.path is not None:
            self._signature = self._stat()
            self.rules = load_rules(self.path)
        else:
            self.rules = list(rules or [])

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        self._rules = list(rules)
        self._by_id = {rule.id: rule for rule in self._rules}
        self._compiled = {}  # rebuilt lazily per (speaker, track)
        self._generation += 1

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def maybe_reload(self) -> bool:
        """Reload the rules file if its mtime or size changed; True when new rules are in force.

        A broken or missing file keeps the rules in force and logs one error line (once per change).
        """
        if self.path is None:
            return False
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature  # also for a failure: log it once, not on every event
        if signature is None:
            log.error("trigger rules %s: file is gone; keeping %d rule(s)", self.path, len(self._rules))
            return False
        try:
            rules = load_rules(self.path)
        except ValueError as exc:
            log.error("trigger rules not reloaded, keeping %d rule(s): %s", len(self._rules), exc)
            return False
        self.rules = rules
        log.info("trigger rules reloaded from %s: %d rule(s)", self.path, len(rules))
        return True

    def end_call(self, call_sid: str) -> None:
        """Forget what fired during ``call_sid``."""
        self._calls.pop(call_sid, None)

    def _matcher(self, speaker: str, track: str) -> _Compiled:
        key = (speaker, track)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(
                [r for r in self._rules if r.applies_to(speaker, track)]
            )
        return compiled

    def _utterance(self, event: TranscriptEvent) -> _Utterance:
        call = self._calls.get(event.call_sid)
        if call is None:
            if len(self._calls) >= MAX_CALLS:  # end_call() was missed somewhere: drop the oldest call
                self._calls.pop(next(iter(self._calls)))
            call = self._calls[event.call_sid] = OrderedDict()
        state = call.get(event.utterance_id)
        if state is None:
            if len(call) >= MAX_UTTERANCES_PER_CALL:
                call.popitem(last=False)
            state = call[event.utterance_id] = _Utterance()
        return state

    def process(self, event: TranscriptEvent) -> list[TriggerFired]:
        """The rules that newly match ``event`` (a partial or a final); each fires once per utterance."""
        if not isinstance(event, TranscriptEvent) or not self._rules or not event.text.strip():
            return []
        compiled = self._matcher(event.speaker, str(event.track))
        if not (compiled.exact or compiled.regex):
            return []
        state = self._utterance(event)
        text = _Text(event.text)
        if not text.tokens or (self._generation, text.norm) == state.last:
            return []  # partials often repeat the previous text: nothing new can match
        state.last = (self._generation, text.norm)
        fired = state.fired
        matches: dict[str, str] = {}  # rule id → matched original text, in rule-file order of discovery

        padded = f" {text.norm} "
        for rule_id, phrase in compiled.exact:
            if rule_id in fired or rule_id in matches:
                continue
            at = padded.find(phrase)
            if at >= 0:
                i, j = text.token_range(at, at + len(phrase) - 2)
                matches[rule_id] = text.original_span(i, j)

        for rule_id, pattern in compiled.regex:
            if rule_id in fired or rule_id in matches:
                continue
            m = pattern.search(text.norm)
            if m:
                i, j = text.token_range(*m.span()) if m.end() > m.start() else (0, 0)
                matches[rule_id] = text.original_span(i, j) if j > i else m.group()

        if compiled.fuzzy:
            self._fuzzy(compiled, text, fired, matches)

        out = []
        for rule_id, matched in matches.items():
            fired.add(rule_id)
            rule = self._by_id[rule_id]
            out.append(
                TriggerFired(
                    call_sid=event.call_sid,
                    stream_sid=event.stream_sid,
                    rule_id=rule_id,
                    utterance_id=event.utterance_id,
                    track=event.track,
                    speaker=event.speaker,
                    matched=matched,
                    text=event.text,
                    is_final=event.is_final,
                    severity=rule.severity,
                    payload=copy.deepcopy(rule.payload),  # sinks may mutate theirs; the rule's stays intact
                    at=time.time(),
                )
            )
        return out

    def _fuzzy(self, compiled: _Compiled, text: _Text, fired: set[str], matches: dict[str, str]) -> None:
        rows = [
            r
            for r, rule_id in enumerate(compiled.fuzzy_rule)
            if rule_id not in fired and rule_id not in matches
        ]
        if not rows:
            return
        tokens = text.tokens
        windows: list[str] = []
        bounds: list[tuple[int, int]] = []
        sizes = {n + d for r in rows for n in (compiled.fuzzy_words[r],) for d in (-1, 0, 1)}
        for size in sorted(s for s in sizes if 1 <= s <= len(tokens)):
            for i in range(len(tokens) - size + 1):
                windows.append(" ".join(tokens[i : i + size]))
                bounds.append((i, i + size))
        if not windows:
            return
        phrases = [compiled.fuzzy[r] for r in rows]
        cutoffs = compiled.fuzzy_cutoff[rows]
        # One C call scores every phrase against every window; ratio's length bound prunes most pairs.
        scores = process.cdist(
            phrases,
            windows,
            scorer=fuzz.ratio,
            score_cutoff=float(cutoffs.min()),
            dtype=np.float32,
            workers=1,
        )
        hit_rows = np.nonzero((scores >= cutoffs[:, None]).any(axis=1))[0]
        for k in hit_rows:
            rule_id = compiled.fuzzy_rule[rows[k]]
            if rule_id in matches:
                continue
            nwords = compiled.fuzzy_words[rows[k]]
            for w in np.argsort(-scores[k], kind="stable"):
                if scores[k, w] < cutoffs[k]:
                    break
                i, j = bounds[w]
                if abs((j - i) - nwords) <= 1 and _word_guard(phrases[k], tokens[i:j]):
                    matches[rule_id] = text.original_span(i, j)
                    break
