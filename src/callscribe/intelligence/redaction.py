"""PCI/PII redaction of transcripts before any sink sees them: pure, sans-I/O, per event.

What is masked (each entity can be switched off):

============  ==========================================================================  ==========================
entity        when                                                                        mask
============  ==========================================================================  ==========================
``card``      13–19 digits, Luhn-valid, with a card-like issuer prefix (any prefix after   ``[card ending 1111]``
              a card cue such as "card", "visa"), however said (:mod:`.spoken`)            (``card_mask`` template)
``cvv``       3–4 digits after "security code", "CVV", "CVC", "code on the back"…         ``[security code]``
``expiry``    a month/year after "expires", "expiration", "exp date", "valid thru"…       ``[expiry]``
``ssn``       9 digits said 3-2-4 (123-45-6789, "one two three, four five, …"), or any    ``[ssn]``
              9 digits after "social security" / "SSN"
``phone``     what ``phonenumbers.PhoneNumberMatcher`` (US, VALID) finds in the           ``[phone]``
              normalised text ("four one five, five five five…" → 4155552671)
``email``     written ``a@b.com``, or spoken "john dot smith at example dot com"          ``[email]``
============  ==========================================================================  ==========================

Streaming (:class:`Redactor`), the rules in one place:

- **Finals are precise**: only the masks above. A final that ends in a possible card prefix — a
  number of ≥ 8 digits, or ≥ 4 while a card cue was heard in the call in the last 60 s, not yet
  a complete card — is **held** (up to ``hold_seconds``) for the same speaker's next final. If
  together they make a card, each is emitted with its share of the digits replaced by the same mask:
  ``"my card number is 4111 1111"`` + ``"1111 1111. Thanks"`` →
  ``"my card number is [card ending 1111]"`` and ``"[card ending 1111]. Thanks"``; the card is
  counted once. Up to 4 finals chain this way (a card read in four pauses).
- A held final that is not continued (the next final does not start with digits, the hold
  expires, the call ends) is emitted as it was, except that after a card cue its number, if of 7
  digits or more, becomes ``[number…]``: at that point it is not a card, but it could be most of
  one the transcriber mangled, and more than 6 leading digits of a card are not for display.
- The digits a previous final ended with (emitted, not held: shorter than the hold threshold) stay
  known for ``hold_seconds``, so a card whose first group was already emitted is still recognised,
  and the rest of it masked (only that first short group was shown).
- **Partials are conservative**: besides the masks above, any number of ≥ 5 digits (≥ 4 after a card
  cue) becomes ``[number…]``, including the digits of a partial that continue a held final's
  number. The final for that utterance id carries the precise masks.
- "What's the security code?" / "…expiration date?" ending a final makes the next finals of the call
  (either speaker, 15 s) read as if the cue preceded them: "123" → ``[security code]``.

Hand-written rather than a redaction library: Presidio and friends detect in finished text; none
reads spoken digits or keeps state across partials and utterances, and both are the point here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from phonenumbers import Leniency, PhoneNumberMatcher

from callscribe.events import CallEnded, Event, TranscriptEvent, Word
from callscribe.intelligence.spoken import NUMBERISH, Run, find_runs, is_trailing, normalise

ALL_ENTITIES: tuple[str, ...] = ("card", "cvv", "expiry", "ssn", "phone", "email")
DEFAULT_CARD_MASK = "[card ending {last4}]"
NUMBER_MASK = "[number…]"
MASKS = {
    "cvv": "[security code]",
    "expiry": "[expiry]",
    "ssn": "[ssn]",
    "phone": "[phone]",
    "email": "[email]",
}

HOLD_DIGITS = 8  # a final ending in this many digits may be a card's first part
HOLD_DIGITS_CUED = 4  # … or this many after a card cue
PARTIAL_DIGITS = 5  # a partial hides numbers this long (a card in progress shows at most 4 digits)
PARTIAL_DIGITS_CUED = 4
POLICY_DIGITS = 7  # an uncontinued held number this long, after a card cue, becomes [number…]
CARD_CONTEXT_SECONDS = 60.0
CUE_SECONDS = 15.0
MAX_HELD = 4
_JOIN = ", "  # between utterances: a pause, like a comma

_CARD_CUE = re.compile(
    r"\b(?:card|visa|master\s?card|amex|american\s+express|discover|maestro|diners|jcb|unionpay|"
    r"long\s+number|pan|(?:16|sixteen)[\s-]digits?)\b",
    re.IGNORECASE,
)
_GAP = (
    r"(?:is|it's|its|it|was|the|my|your|number|code|on|in|of|at|back|card|that's|thats|that|uh|um|er|"
    r"yes|yeah|ok|okay|sure|so|be|would|will|should|date|are|and|digits|value)"
)
_SEP = r"[\s,:;.\-]"
_CVV_CUE = (
    r"(?:security\s+(?:code|number)|verification\s+(?:code|value|number)|c\.?\s?v\.?\s?[vc]\.?\s?2?|cid|"
    r"[34]\s?-?\s?digit\s+(?:security\s+)?(?:code|number)|code\s+on\s+the\s+back)"
)
_EXP_CUE = (
    r"(?:expir(?:es|ed|y|ation|ing)(?:\s+date)?|exp(?:\.|\s+date)|valid\s+(?:thru|through|till|until)|"
    r"good\s+(?:thru|through|till|until))"
)
_MONTHS = (
    r"(?:january|february|march|april|may|june|july|august|september|october|november|december|"
    r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)"
)
_EXP_VALUE = (
    rf"(?:(?:0?[1-9]|1[0-2])\s*(?:/|-|\.|slash|of|\s)\s*(?:20\s?)?\d{{2}}|(?:0[1-9]|1[0-2])(?:20)?\d{{2}}"
    rf"|[1-9]\d{{2}}|{_MONTHS}\.?(?:\s+of)?[\s,]+(?:20\s?)?\d{{2}})(?![\d/])"
)
_CVV = re.compile(rf"\b{_CVV_CUE}\b(?:{_SEP}+{_GAP}\b){{0,6}}{_SEP}*(?P<v>\d{{3,4}})(?![\d/:])(?!\s\d)", re.I)
_EXP = re.compile(rf"\b{_EXP_CUE}(?:{_SEP}+{_GAP}\b){{0,6}}{_SEP}*(?P<v>{_EXP_VALUE})", re.I)
_CVV_DANGLING = re.compile(rf"\b{_CVV_CUE}\b[^\d]{{0,40}}\Z", re.I)
_EXP_DANGLING = re.compile(rf"\b{_EXP_CUE}[^\d]{{0,40}}\Z", re.I)
_SSN_CUE = re.compile(r"\b(?:social(?:\s+security)?|ssn|s\.?\s?s\.?\s?n\b|tax\s?payer\s+id|itin)", re.I)
_PHONE_REGION = re.compile(r"(?<!\w)\+?\(?\d[\d\s().\-]*\d\)?(?![^\W\d])")  # not inside a code like 1Z99…
_TLD = r"(?:com|net|org|edu|gov|io|co|us|uk|ca|info|biz|me|ai|app|dev|de|fr|au|in|mil|tv|ly|xyz)"
_CONN = r"(?:[._+\-]|\s+(?:dot|period|point|underscore|under\s+score|dash|hyphen|minus|plus)\s+)"
_LOCAL = r"(?:[a-z](?:\s[a-z]\b)+|[a-z0-9]+)"  # spelled letters "j o h n", or a word
_EMAIL = re.compile(
    rf"\b(?P<local>{_LOCAL}(?:{_CONN}{_LOCAL})*)\s*(?P<at>@|\s+at\s+)\s*"
    rf"(?P<domain>[a-z0-9-]+(?:(?:\.|\s+dot\s+)[a-z0-9-]+)*(?:\.|\s+dot\s+)[a-z]{{2,24}})\b",
    re.I,
)
_EMAIL_CUE = re.compile(r"\be-?\s?mail|\baddress\b", re.I)
_MAIL_PROVIDERS = frozenset(
    {"gmail", "googlemail", "yahoo", "hotmail", "outlook", "live", "msn", "icloud", "me", "mac", "aol"}
    | {"proton", "protonmail", "comcast", "att", "verizon", "sbcglobal", "mail", "gmx", "zoho", "yandex"}
)
_TLDS = frozenset(_TLD[3:-1].split("|"))
_CONN_WORD = re.compile(r"[._+\-\d]|\b(?:dot|period|point|underscore|dash|hyphen|plus)\b", re.I)


def luhn(digits: str) -> bool:
    """The Luhn check (hand-written: four lines, no dependency worth adding)."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 else d
    return total % 10 == 0


def plausible_pan(digits: str) -> bool:
    """An issuer prefix and length that real cards use (Visa, Mastercard, Amex, Discover, JCB,
    Diners, UnionPay, Maestro, Mir, RuPay): cuts the 1 in 10 ordinary numbers that pass Luhn."""
    n, first = len(digits), digits[0]
    if first == "4":
        return n in (13, 16, 19)
    if first == "5":
        return n == 16 or (digits[1] in "0678" and 13 <= n <= 19)
    if first == "3":
        if digits[1] in "47":
            return n == 15
        return digits[1] in "05689" and 14 <= n <= 19  # Diners, JCB
    if first == "6":
        return 16 <= n <= 19
    if first == "2":
        return 2200 <= int(digits[:4]) <= 2720 and 16 <= n <= 19
    if first == "8":
        return digits[1] in "12" and n == 16  # RuPay
    return False


@dataclass(frozen=True, slots=True)
class Span:
    """Characters ``[start, end)`` to replace by ``mask``."""

    start: int
    end: int
    entity: str
    mask: str
    value: str = ""  # the digits, for a card


@dataclass(slots=True)
class Scan:
    """What one detection pass over a lead plus some segments found (see :func:`scan`)."""

    text: str
    bounds: list[tuple[int, int]]  # per part: the lead (if any) first, then each segment
    spans: list[Span]
    runs: list[Run]
    ctx: bool  # a card cue is in play
    lead: bool  # bounds[0] is the lead, not a segment

    def part(self, k: int) -> tuple[str, list[Span]]:
        """Part ``k`` (0 = first segment) masked, and the spans that touched it."""
        start, end = self.bounds[k + self.lead]
        out: list[str] = []
        pos = start
        touched: list[Span] = []
        for span in self.spans:
            if span.end <= start or span.start >= end:
                continue
            s, e = max(span.start, start), min(span.end, end)
            out.append(self.text[pos:s])
            out.append(span.mask)
            pos = e
            touched.append(span)
        out.append(self.text[pos:end])
        return "".join(out), touched

    def trailing(self) -> Run | None:
        """The run the whole text ends with (punctuation and fillers aside), if any."""
        if self.runs and is_trailing(self.text, self.runs[-1]):
            return self.runs[-1]
        return None

    def covered(self, run: Run, entities: tuple[str, ...] | None = None) -> list[Span]:
        return [
            s
            for s in self.spans
            if s.start < run.end and s.end > run.start and (entities is None or s.entity in entities)
        ]


def _card_window(run: Run, ctx: bool) -> tuple[int, int] | None:
    """Atoms ``[i, j)`` of ``run`` that say a card, or None.

    The whole run first; else a window leaving at most 4 digits out ("oh, 4111 …", a CVV said
    straight after), cut only where the speaker paused, changed from words to digits, or where a
    4-4-4-4 grouping ends — so a 22-digit tracking number never yields a "card" inside it.
    """
    d = run.digits
    n = len(run.atoms)
    if 13 <= len(d) <= 19 and luhn(d) and (ctx or plausible_pan(d)):
        return 0, n
    if len(d) < 13 or len(d) > 23:
        return None
    cum = [0]
    for a in run.atoms:
        cum.append(cum[-1] + len(a.digits))
    best: tuple[int, int] | None = None
    for i in range(n):
        if cum[i] > 4:
            break
        for j in range(n, i, -1):
            if cum[i] + len(d) - cum[j] > 4:
                break
            width = cum[j] - cum[i]
            if (i, j) == (0, n) or width > 19:
                continue
            if width < 13:
                break
            if not (_cut_ok(run, i, j, i) and _cut_ok(run, i, j, j)):
                continue
            wd = d[cum[i] : cum[j]]
            if (
                luhn(wd)
                and (ctx or plausible_pan(wd))
                and (best is None or width > cum[best[1]] - cum[best[0]])
            ):
                best = (i, j)
    return best


def _cut_ok(run: Run, i: int, j: int, cut: int) -> bool:
    """May a card window ``[i, j)`` start/end at atom boundary ``cut``?"""
    if cut in (0, len(run.atoms)):
        return True
    before, after = run.atoms[cut - 1], run.atoms[cut]
    if run.strong[cut - 1] or before.spoken != after.spoken:
        return True
    lengths = [len(a.digits) for a in run.atoms[i:j]]
    grouped = (all(n == 4 for n in lengths[:-1]) and lengths[-1] <= 4) or lengths == [4, 6, 5]
    outside = run.atoms[cut] if cut == j else run.atoms[cut - 1]
    return grouped and len(outside.digits) != 4


def _overlaps(spans: list[Span], s: int, e: int) -> bool:
    return any(x.start < e and x.end > s for x in spans)


def detect(text: str, runs: list[Run], entities: frozenset[str], card_mask: str, ctx: bool) -> list[Span]:
    """The precise masks in ``text``, by priority card > expiry > cvv > ssn > phone > email."""
    spans: list[Span] = []
    if "card" in entities:
        for run in runs:
            if len(run.digits) >= 13:
                w = _card_window(run, ctx)
                if w is not None:
                    digits = "".join(a.digits for a in run.atoms[w[0] : w[1]])
                    a, b = run.atoms[w[0]].start, run.atoms[w[1] - 1].end
                    spans.append(Span(a, b, "card", card_mask.format(last4=digits[-4:]), digits))
    digits_any = bool(runs) or any(c.isdigit() for c in text)
    if digits_any and (entities & {"cvv", "expiry", "phone"}):
        norm = normalise(text, runs)
        for entity, pattern in (("expiry", _EXP), ("cvv", _CVV)):
            if entity in entities:
                for m in pattern.finditer(norm.text):
                    s, e = norm.original_span(*m.span("v"))
                    if not _overlaps(spans, s, e):
                        spans.append(Span(s, e, entity, MASKS[entity]))
        if "ssn" in entities:
            _ssn(text, runs, spans)
        if "phone" in entities:
            for m in _PHONE_REGION.finditer(norm.text):
                region = m.group()
                if not 10 <= sum(c.isdigit() for c in region) <= 12:
                    continue  # a US number has 10 digits (11 with 1, +1); longer runs are not phones
                if _overlaps(spans, *norm.original_span(*m.span())):
                    continue  # already a card / SSN: the matcher's ~0.3 ms would find nothing better
                for ps, pe in _phone_matches(region):
                    s, e = norm.original_span(m.start() + ps, m.start() + pe)
                    if not _overlaps(spans, s, e):
                        spans.append(Span(s, e, "phone", MASKS["phone"]))
    elif "ssn" in entities and runs:
        _ssn(text, runs, spans)
    if "email" in entities and ("@" in text or " at " in text.lower()):
        for m in _EMAIL.finditer(text):
            if m.group("at") != "@" and not _spoken_email_ok(text, m):
                continue
            s, e = m.span()
            if not _overlaps(spans, s, e):
                spans.append(Span(s, e, "email", MASKS["email"]))
    spans.sort(key=lambda x: x.start)
    return spans


@lru_cache(maxsize=4096)
def _phone_matches(region: str) -> tuple[tuple[int, int], ...]:
    """US numbers in a digit region (cached: partials repeat the same number while it grows)."""
    return tuple((m.start, m.end) for m in PhoneNumberMatcher(region, "US", leniency=Leniency.VALID))


def _ssn(text: str, runs: list[Run], spans: list[Span]) -> None:
    cues = None
    for run in runs:
        d = run.digits
        if len(d) != 9 or d[:3] in ("000", "666") or d[0] == "9" or d[3:5] == "00" or d[5:] == "0000":
            continue
        if run.groups() != [3, 2, 4]:
            if cues is None:
                cues = [m.end() for m in _SSN_CUE.finditer(text)]
            if not any(0 <= run.start - c <= 60 for c in cues):
                continue
        if not _overlaps(spans, run.start, run.end):
            spans.append(Span(run.start, run.end, "ssn", MASKS["ssn"]))


def _spoken_email_ok(text: str, m: re.Match[str]) -> bool:
    """ "name at domain dot com" is an address when the name has a separator or digit, the domain
    is a mail provider, or the sentence talks about e-mail ("look at example dot com" is not)."""
    labels = re.split(r"\.|\s+dot\s+", m.group("domain").lower())
    if labels[-1] not in _TLDS:
        return False
    domain = labels[0]
    return bool(
        "." in m.group("domain")
        or _CONN_WORD.search(m.group("local"))
        or domain in _MAIL_PROVIDERS
        or _EMAIL_CUE.search(text, 0, m.start())
    )


def scan(
    segments: Sequence[str],
    *,
    entities: frozenset[str] = frozenset(ALL_ENTITIES),
    card_mask: str = DEFAULT_CARD_MASK,
    lead: str = "",
    ctx: bool = False,
    conservative: bool = False,
) -> Scan:
    """Detect over ``lead`` and ``segments`` read as one text (joined by a pause).

    ``lead`` is context not to be emitted again (the digits a previous final ended with, or a cue);
    ``conservative`` adds ``[number…]`` over any number that could be part of a card (partials).
    """
    parts = [lead, *segments] if lead else list(segments)
    bounds: list[tuple[int, int]] = []
    pos = 0
    for p in parts:
        bounds.append((pos, pos + len(p)))
        pos += len(p) + len(_JOIN)
    text = _JOIN.join(parts)
    if not NUMBERISH.search(text) and "@" not in text and " at " not in text.lower():
        return Scan(text, bounds, [], [], False, bool(lead))  # the common case: nothing to look at
    runs = find_runs(text)
    ctx = ctx or ("card" in entities and _CARD_CUE.search(text) is not None)
    spans = detect(text, runs, entities, card_mask, ctx)
    result = Scan(text, bounds, spans, runs, ctx, bool(lead))
    if conservative and "card" in entities:
        add_number_masks(result, PARTIAL_DIGITS_CUED if ctx else PARTIAL_DIGITS)
    return result


def add_number_masks(result: Scan, min_digits: int, after: int = 0) -> None:
    """``[number…]`` over every run of ≥ ``min_digits`` digits that ends after ``after`` and no
    precise mask touches."""
    extra = [
        Span(r.start, r.end, "number", NUMBER_MASK)
        for r in result.runs
        if len(r.digits) >= min_digits and r.end > after and not result.covered(r)
    ]
    if extra:
        result.spans = sorted(result.spans + extra, key=lambda x: x.start)


def redact_text(
    text: str, entities: Iterable[str] = ALL_ENTITIES, card_mask: str = DEFAULT_CARD_MASK
) -> tuple[str, dict[str, int]]:
    """``text`` with its precise masks (as a final), and how many of each entity were masked."""
    result = scan([text], entities=frozenset(entities), card_mask=card_mask)
    masked, spans = result.part(0)
    counts: dict[str, int] = {}
    for s in spans:
        counts[s.entity] = counts.get(s.entity, 0) + 1
    return masked, counts


# --- streaming


@dataclass(slots=True)
class _TrackState:
    held: list[TranscriptEvent] = field(default_factory=list)
    deadline: float = 0.0
    held_lead: str = ""  # the lead the held finals were read after
    lead: str = ""  # digits a just-emitted final ended with: a card may go on in the next one
    lead_until: float = 0.0


@dataclass(slots=True)
class _CallState:
    card_until: float = 0.0  # a card cue was heard: stricter thresholds until then
    cue: str = ""  # "security code" / "expires": a question waiting for its answer
    cue_until: float = 0.0


def _words_text(words: Sequence[Word]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by spaces, and each word's span in that string."""
    offsets: list[tuple[int, int]] = []
    pos = 0
    out: list[str] = []
    for w in words:
        t = w.word.strip()
        offsets.append((pos, pos + len(t)))
        out.append(t)
        pos += len(t) + 1
    return " ".join(out), offsets


def _mask_words(
    words: tuple[Word, ...], offsets: list[tuple[int, int]], text: str, spans: list[tuple[int, int, str]]
) -> tuple[Word, ...]:
    """``words`` with the words each mask touches merged into one Word carrying the mask (text of
    those words outside the span kept: ``"1111."`` → ``"[card ending 1111]."``), first start / last end.

    ``text`` is the words joined (:func:`_words_text`); ``spans`` are sorted (start, end, mask) in it.
    """
    groups: list[tuple[int, int, list[tuple[int, int, str]]]] = []  # word range [i, j) and its spans
    for s, e, mask in spans:
        i = next((k for k, o in enumerate(offsets) if o[1] > s), len(offsets))
        j = i
        while j < len(offsets) and offsets[j][0] < e:
            j += 1
        if j == i:
            continue
        if groups and i < groups[-1][1]:
            groups[-1] = (groups[-1][0], max(j, groups[-1][1]), [*groups[-1][2], (s, e, mask)])
        else:
            groups.append((i, j, [(s, e, mask)]))
    out: list[Word] = []
    pos = 0
    for i, j, group in groups:
        out.extend(words[pos:i])
        start, end = offsets[i][0], offsets[j - 1][1]
        pieces, cur = [], start
        for s, e, mask in group:
            pieces.append(text[cur : max(cur, s)])
            pieces.append(mask)
            cur = max(cur, min(e, end))
        pieces.append(text[cur:end])
        out.append(Word("".join(pieces), words[i].start, words[j - 1].end, None))
        pos = j
    out.extend(words[pos:])
    return tuple(out)


class Redactor:
    """Redacts every transcript event before publication; holds finals that may start a card.

    Feed every event to :meth:`process` and publish what it returns; call :meth:`poll` when
    :meth:`next_deadline` passes. ``counts`` is the audit: masks applied on finals per entity
    (``card``, ``cvv``, …, ``number`` for held numbers masked as ``[number…]``), and on partials
    under ``partial.<entity>``.
    """

    def __init__(
        self,
        *,
        entities: Iterable[str] = ALL_ENTITIES,
        card_mask: str = DEFAULT_CARD_MASK,
        hold_seconds: float = 2.5,
    ) -> None:
        self.entities = frozenset(entities)
        unknown = self.entities - set(ALL_ENTITIES)
        if unknown:
            raise ValueError(f"unknown redaction entities: {sorted(unknown)}")
        card_mask.format(last4="0000")  # a bad template fails here, not mid-call
        self.card_mask = card_mask
        self.hold_seconds = hold_seconds
        self.counts: dict[str, int] = {}
        self._tracks: dict[tuple[str, str], _TrackState] = {}
        self._calls: dict[str, _CallState] = {}

    # --- public

    def process(self, event: Event, now: float) -> list[Event]:
        """The events to publish now for ``event`` (redacted), after any holds that expired."""
        out: list[Event] = self.poll(now)
        if isinstance(event, TranscriptEvent):
            out.extend(self._transcript(event, now))
        elif isinstance(event, CallEnded):
            for key in [k for k in self._tracks if k[0] == event.call_sid]:
                st = self._tracks.pop(key)
                if st.held:
                    out.extend(self._flush(st, self._calls.get(event.call_sid, _CallState()), now))
            self._calls.pop(event.call_sid, None)
            out.append(event)
        else:
            out.append(event)
        return out

    def poll(self, now: float) -> list[Event]:
        """Held finals whose hold expired, emitted as the flush rule says."""
        out: list[Event] = []
        for (call_sid, _), st in self._tracks.items():
            if st.held and st.deadline <= now:
                out.extend(self._flush(st, self._calls.get(call_sid, _CallState()), now))
        return out

    def next_deadline(self) -> float | None:
        """When the earliest hold expires (for a timer), or None."""
        deadlines = [st.deadline for st in self._tracks.values() if st.held]
        return min(deadlines) if deadlines else None

    # --- internals

    def _scan(self, lead: str, segments: Sequence[str], ctx: bool, conservative: bool = False) -> Scan:
        return scan(
            segments,
            entities=self.entities,
            card_mask=self.card_mask,
            lead=lead,
            ctx=ctx,
            conservative=conservative,
        )

    def _transcript(self, e: TranscriptEvent, now: float) -> list[Event]:
        call = self._calls.setdefault(e.call_sid, _CallState())
        if "card" in self.entities and _CARD_CUE.search(e.text):
            call.card_until = now + CARD_CONTEXT_SECONDS
        ctx = now < call.card_until
        key = (e.call_sid, e.track.value)
        st = self._tracks.get(key)
        if st is None:
            st = self._tracks[key] = _TrackState()
        lead = self._lead(st, call, now)
        if not e.is_final:
            held = len(st.held)
            return list(
                self._emit([*st.held, e], lead, ctx, first=held, conservative=True, prefix="partial.")
            )

        out: list[Event] = []
        result = self._scan(lead, [h.text for h in st.held] + [e.text], ctx)
        if st.held and not self._continues(result):
            out.extend(self._flush(st, call, now))
            st.lead = ""
            lead = self._lead(st, call, now)
            result = self._scan(lead, [e.text], ctx)
        if self._should_hold(result, st):
            if not st.held:
                st.held_lead = lead
            st.held.append(e)
            st.deadline = now + self.hold_seconds
            return out
        out.extend(self._emit([*st.held, e], lead, result.ctx, result=result, held=len(st.held)))
        st.held.clear()
        self._remember(st, result, now)
        self._update_cue(call, e.text, result, now)
        return out

    def _lead(self, st: _TrackState, call: _CallState, now: float) -> str:
        """What the next text of this track is read after: the held finals' own lead, the digits
        the last final ended with, or a pending cue."""
        if st.held:
            return st.held_lead
        if st.lead and now < st.lead_until:
            return st.lead
        if call.cue and now < call.cue_until:
            return call.cue
        return ""

    @staticmethod
    def _continues(result: Scan) -> bool:
        """Does the number the held finals ended with go on into the new final?"""
        held_end = result.bounds[-2][1]
        new_start = result.bounds[-1][0]
        return any(r.start < held_end and r.end > new_start for r in result.runs)

    def _should_hold(self, result: Scan, st: _TrackState) -> bool:
        if "card" not in self.entities or len(st.held) >= MAX_HELD:
            return False
        run = result.trailing()
        if run is None or run.end <= result.bounds[-1][0]:
            return False
        n = len(run.digits)
        if n < (HOLD_DIGITS_CUED if result.ctx else HOLD_DIGITS) or n >= 19:
            return False
        if any(len(s.value) >= 15 for s in result.covered(run, ("card",))):
            return False  # a complete card: nothing more to wait for
        # a phone number or SSN said in full is what it looks like, unless cards are being talked about
        return result.ctx or not result.covered(run, ("phone", "ssn"))

    def _remember(self, st: _TrackState, result: Scan, now: float) -> None:
        """Keep the digits the emitted text ended with, in case the next final continues them."""
        run = result.trailing()
        if run is not None and not result.covered(run, ("card",)):
            st.lead, st.lead_until = run.digits[-19:], now + self.hold_seconds
        else:
            st.lead = ""

    def _update_cue(self, call: _CallState, text: str, result: Scan, now: float) -> None:
        if any(s.entity in ("cvv", "expiry") for s in result.spans):
            call.cue = ""  # answered
        if "cvv" in self.entities and _CVV_DANGLING.search(text):
            call.cue, call.cue_until = "security code", now + CUE_SECONDS
        elif "expiry" in self.entities and _EXP_DANGLING.search(text):
            call.cue, call.cue_until = "expires", now + CUE_SECONDS

    def _flush(self, st: _TrackState, call: _CallState, now: float) -> list[Event]:
        """Emit the held finals as they are, but for the flush rule (see the module docstring)."""
        lead = st.held_lead
        result = self._scan(lead, [h.text for h in st.held], now < call.card_until)
        out = self._emit(list(st.held), lead, result.ctx, result=result, held=len(st.held))
        st.held.clear()
        self._remember(st, result, now)
        return list(out)

    def _flush_rule(self, result: Scan, held: int) -> None:
        """After a card cue, a held number of ≥ 7 digits that did not become a card → [number…]."""
        if held and result.ctx and "card" in self.entities:
            held_start = result.bounds[result.lead][0]
            held_end = result.bounds[result.lead + held - 1][1]
            add_number_masks(result, POLICY_DIGITS, after=held_start)
            result.spans = [s for s in result.spans if s.entity != "number" or s.start < held_end]

    def _emit(
        self,
        events: list[TranscriptEvent],
        lead: str,
        ctx: bool,
        *,
        result: Scan | None = None,
        held: int = 0,
        first: int = 0,
        conservative: bool = False,
        prefix: str = "",
    ) -> list[TranscriptEvent]:
        """``events[first:]`` redacted, all of ``events`` read as one text after ``lead`` (the
        first ``held`` were held finals: the flush rule applies to them); counts under ``prefix``."""
        if result is None:
            result = self._scan(lead, [e.text for e in events], ctx, conservative)
        self._flush_rule(result, held)
        seen: set[int] = set()
        out: list[TranscriptEvent] = []
        words_result: Scan | None = None
        word_texts: list[tuple[str, list[tuple[int, int]]]] = []
        for k in range(first, len(events)):
            e = events[k]
            text, touched = result.part(k)
            for s in touched:
                if id(s) not in seen:
                    seen.add(id(s))
                    self.counts[prefix + s.entity] = self.counts.get(prefix + s.entity, 0) + 1
            if e.stable_text == e.text:
                stable = text
            elif not e.stable_text or (not touched and e.text.startswith(e.stable_text)):
                stable = e.stable_text
            else:  # a stable prefix that cuts a number: judge it as a partial
                prior = [x.text for x in events[:k]]
                stable = self._scan(lead, [*prior, e.stable_text], ctx, conservative=True).part(k)[0]
            words = e.words
            if words and (touched or _has_number(words)):
                if words_result is None and self._words_are_text(events):
                    words_result = result  # words say exactly the text: reuse its scan
                    word_texts = [_words_text(x.words) for x in events]
                if words_result is None:
                    word_texts = [_words_text(x.words) for x in events]
                    words_result = self._scan(lead, [w[0] for w in word_texts], ctx, conservative)
                    self._flush_rule(words_result, held)
                base, stop = words_result.bounds[k + words_result.lead]
                if words_result is result:
                    base += len(e.text) - len(e.text.lstrip())
                local = [
                    (max(s.start, base) - base, min(s.end, stop) - base, s.mask)
                    for s in words_result.spans
                    if s.start < stop and s.end > base
                ]
                if local:
                    words = _mask_words(words, word_texts[k][1], word_texts[k][0], local)
            if touched or stable is not e.stable_text or words is not e.words:
                e = replace(e, text=text, stable_text=stable, words=words)
            out.append(e)
        return out

    @staticmethod
    def _words_are_text(events: list[TranscriptEvent]) -> bool:
        return all(" ".join(w.word.strip() for w in e.words) == e.text.strip() for e in events)


def _has_number(words: Sequence[Word]) -> bool:
    return any(NUMBERISH.search(w.word) or "@" in w.word for w in words)
