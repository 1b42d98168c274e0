"""Spoken-number normalisation: where a transcript says a number, and which digits it says.

A transcript says a card number in many ways: ``4111 1111 1111 1111``, ``4111-1111-…``,
``4, 1, 1, 1, …`` (Whisper's comma per spoken digit), ``four one one one``, ``oh`` for zero,
``double four``, ``forty one eleven``, or a mix. :func:`find_runs` reads a text into
:class:`Run`\\ s: maximal sequences of number :class:`Atom`\\ s separated only by spaces, ``, . -``
or fillers (``uh``, ``um``), each atom keeping the character span it came from, so a detector can
decide on the digits and mask exactly the characters that said them. :func:`normalise` renders the
text with every run written in digits, with a map back to the original characters, for matchers
that want digits (phone numbers, security codes, expiry dates).

Reading rules (pragmatic, chosen for how people read card numbers aloud):

- a digit word is one digit; ``oh``/``o`` is 0 only next to another number;
- ``double``/``triple`` + digit repeat it (``double four`` = 44);
- a teen is its two digits, a tens word + unit is one two-digit group (``forty one`` = 41), so
  ``forty one eleven`` = 4111: people read cards in pairs, and the Luhn check decides later;
- ``X hundred [and] Y`` / ``X thousand …`` compose (``forty one hundred`` = 4100);
- ``for``/``to``/``too`` are digits only between two single digits (ASR homophones);
- prices (``$1,299.99``), decimals (``12.99``), times (``10:30``), dates (``12/25``),
  percentages, ordinals (``3rd``) and letter–digit codes are not run material: they end a run.

Hand-written rather than text2num's ``alpha2digit``: redaction needs each digit's character span,
which ``alpha2digit`` does not expose, and it composes arithmetic (``twenty twenty four`` → 20 24).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_MULT = {"double": 2, "triple": 3}
_OH = frozenset({"oh", "o"})
_HOMOPHONES = {"for": 4, "to": 2, "too": 2, "won": 1, "ate": 8}
FILLERS = frozenset({"uh", "um", "umm", "uhm", "uhh", "er", "erm", "ah", "hmm", "mm"})

# item kinds
_NUM, _UNIT, _TEEN, _TENS_K, _HUNDRED, _THOUSAND, _MULT_K, _OH_K, _HOMO, _AND = range(10)
_WEAK, _STRONG, _BREAK = 10, 11, 12
_NUMBERISH = frozenset({_NUM, _UNIT, _TEEN, _TENS_K, _MULT_K, _OH_K, _HUNDRED, _THOUSAND})
_WORD_KINDS = {
    **{w: _UNIT for w in _UNITS},
    **{w: _TEEN for w in _TEENS},
    **{w: _TENS_K for w in _TENS},
    **{w: _MULT_K for w in _MULT},
    **{w: _OH_K for w in _OH},
    **{w: _HOMO for w in _HOMOPHONES},
    "hundred": _HUNDRED,
    "thousand": _THOUSAND,
    "and": _AND,
}
_Item = tuple[int, str, int, int]  # (kind, lowered token or digits, start, end)
_VALUES = {
    **_UNITS,
    **_TEENS,
    **_TENS,
    **_MULT,
    **_HOMOPHONES,
    "oh": 0,
    "o": 0,
    "hundred": 100,
    "thousand": 1000,
}

_TOKEN = re.compile(
    r"(?P<num>[$£€]\s?\d+(?:[.,]\d+)*|\d+(?:[.,:/]\d+)+)(?!\w)"  # money, decimals, times, dates, 4111.1111
    r"|(?P<word>[^\W_]+(?:['’\-][^\W_]+)*)"  # words, digit groups, forty-one, 4111-1111, 3rd
    r"|(?P<space>\s+)"
    r"|(?P<punct>[^\w\s])"
)
_SOFT_PUNCT = frozenset(",.-–—…")  # a pause or a group separator inside a spoken number
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SEP_SPLIT = re.compile(r"[.,]")
# anything that may be spoken after a number without making it less "the end of the text"
_TRAILER = re.compile(r"(?:[\W_]|\b(?:uh|um|umm|er|erm|ah|hmm)\b)*\Z", re.IGNORECASE)
# Cheap gate: does the text hold anything a number could be made of?
NUMBERISH = re.compile(
    r"\d|\b(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\w+teen|twenty|"
    r"thirty|fou?rty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|double|triple)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Atom:
    """One said number: its digits and the characters ``[start, end)`` that said them."""

    digits: str
    start: int
    end: int
    spoken: bool  # said in words (vs written in digits)


@dataclass(frozen=True, slots=True)
class Run:
    """Atoms said one after the other; ``strong[i]`` is True when a pause (``,`` ``.`` ``-`` or a
    filler) separates atom ``i`` from atom ``i + 1`` rather than just a space."""

    atoms: tuple[Atom, ...]
    strong: tuple[bool, ...]
    digits: str

    @property
    def start(self) -> int:
        return self.atoms[0].start

    @property
    def end(self) -> int:
        return self.atoms[-1].end

    def groups(self) -> list[int]:
        """Digit counts of the groups the speaker made: single digits said in a row form one
        group, a pause or a multi-digit atom starts a new one ("one two three, four five" → 3, 2)."""
        out: list[int] = []
        prev_single = False
        for i, atom in enumerate(self.atoms):
            single = len(atom.digits) == 1
            if out and single and prev_single and not self.strong[i - 1]:
                out[-1] += 1
            else:
                out.append(len(atom.digits))
            prev_single = single
        return out


def _items(text: str) -> list[_Item]:
    """Tokens as (kind, lowered text or digits, start, end)."""
    items: list[_Item] = []
    add = items.append
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        s, e = m.span()
        tok = m.group()
        if kind == "space":
            add((_WEAK, "", s, e))
        elif kind == "punct":
            add((_STRONG if tok in _SOFT_PUNCT else _BREAK, tok, s, e))
        elif kind == "num":
            digit_count = sum(c.isdigit() for c in tok)
            if (
                tok[0] in "$£€"
                or ":" in tok
                or "/" in tok
                or text.startswith("%", e)
                or (_THOUSANDS.fullmatch(tok) and digit_count <= 12)
                or (tok.count(".") == 1 and "," not in tok and _is_decimal(tok))
            ):
                add((_BREAK, tok, s, e))  # an amount, a time, a date: one value, not a digit chain
            else:
                pos = s
                for i, part in enumerate(_SEP_SPLIT.split(tok)):
                    if i:
                        add((_STRONG, tok[pos - s], pos, pos + 1))
                        pos += 1
                    add((_NUM, part, pos, pos + len(part)))
                    pos += len(part)
        else:
            low = tok.lower()
            if low.isdigit():
                add((_BREAK, tok, s, e) if text.startswith("%", e) else (_NUM, tok, s, e))
            elif low in _WORD_KINDS:
                add((_WORD_KINDS[low], low, s, e))
            elif low in FILLERS:
                add((_STRONG, low, s, e))
            elif "-" in low:
                _split_hyphenated(low, s, e, add)
            else:
                add((_BREAK, low, s, e))
    return items


def _is_decimal(tok: str) -> bool:
    whole, frac = tok.split(".")
    return len(frac) <= 2 or len(whole) <= 3


def _split_hyphenated(low: str, s: int, e: int, add: Callable[[_Item], None]) -> None:
    """``forty-one`` / ``4111-1111-1111`` become number items; ``e-mail`` stays one word."""
    parts = low.split("-")
    if not all(p.isdigit() or p in _WORD_KINDS for p in parts):
        add((_BREAK, low, s, e))
        return
    pos = s
    for i, part in enumerate(parts):
        if i:
            # "4111-1111": a group separator; "forty-one": one compound
            add((_STRONG if part.isdigit() else _WEAK, "-", pos, pos + 1))
            pos += 1
        add(
            (_NUM, part, pos, pos + len(part))
            if part.isdigit()
            else (_WORD_KINDS[part], part, pos, pos + len(part))
        )
        pos += len(part)


def _neighbour(items: list[_Item], i: int, step: int) -> int:
    """Index of the nearest non-separator item from ``i`` in direction ``step``, or -1."""
    j = i + step
    while 0 <= j < len(items):
        if items[j][0] not in (_WEAK, _STRONG):
            return j
        j += step
    return -1


def _is_single(item: _Item) -> bool:
    kind, tok = item[0], item[1]
    return kind in (_UNIT, _OH_K) or (kind == _NUM and len(tok) == 1)


def _resolve(items: list[_Item]) -> None:
    """Decide the ambiguous words in place: "oh", "for", "and"."""
    for i, (kind, tok, s, e) in enumerate(items):
        if kind == _OH_K:
            p, n = _neighbour(items, i, -1), _neighbour(items, i, 1)
            if not ((p >= 0 and items[p][0] in _NUMBERISH) or (n >= 0 and items[n][0] in _NUMBERISH)):
                items[i] = (_BREAK, tok, s, e)
        elif kind == _HOMO:
            p, n = _neighbour(items, i, -1), _neighbour(items, i, 1)
            if p >= 0 and n >= 0 and _is_single(items[p]) and _is_single(items[n]):
                items[i] = (_UNIT, tok, s, e)
            else:
                items[i] = (_BREAK, tok, s, e)
        elif kind == _AND:
            p, n = _neighbour(items, i, -1), _neighbour(items, i, 1)
            if not (
                p >= 0
                and n >= 0
                and items[p][0] in (_HUNDRED, _THOUSAND)
                and items[n][0] in (_UNIT, _TEEN, _TENS_K)
            ):
                items[i] = (_BREAK, tok, s, e)


class _Words:
    """A tiny parser over the word-number items of one stretch (only spaces between them)."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items

    def next_word(self, j: int) -> int:
        """Index of the next item after ``j`` if only spaces lie between, else -1."""
        j += 1
        while j < len(self.items) and self.items[j][0] == _WEAK:
            j += 1
        return j if j < len(self.items) else -1

    def kind(self, j: int) -> int:
        return self.items[j][0] if j >= 0 else -1

    def value(self, j: int) -> int:
        tok = self.items[j][1]
        return int(tok) if tok.isdigit() else _VALUES[tok]

    def small(self, i: int) -> tuple[int, int, bool] | None:
        """A value below 100 at ``i``: (value, last item index, composable with hundred/thousand)."""
        k = self.kind(i)
        if k == _TENS_K:
            value, last = self.value(i), i
            n = self.next_word(i)
            if self.kind(n) == _UNIT and self.value(n):
                value, last = value + self.value(n), n
            return value, last, True
        if k in (_TEEN, _UNIT):
            return self.value(i), i, self.value(i) > 0
        return None

    def atom(self, i: int) -> tuple[str, int]:
        """The digits said from item ``i`` and the index of the last item used."""
        k = self.kind(i)
        if k == _MULT_K:
            n = self.next_word(i)
            if self.kind(n) in (_UNIT, _OH_K) or (self.kind(n) == _NUM and len(self.items[n][1]) == 1):
                return str(self.value(n)) * self.value(i), n
            return "", i  # "double" without a digit after it: not a number
        if k == _OH_K:
            return "0", i
        if k in (_HUNDRED, _THOUSAND):
            value, last = self.value(i), i
        else:
            small = self.small(i)
            if small is None:
                return "", i
            value, last, composable = small
            if not composable:
                return str(value), last
        value, last = self.scale(value, last)
        return str(value), last

    def scale(self, value: int, last: int) -> tuple[int, int]:
        """``value`` followed by hundred / thousand and what completes them."""
        n = self.next_word(last)
        if self.kind(n) == _HUNDRED and value < 100 and self.kind(last) != _HUNDRED:
            value, last = value * 100, n
            value, last = self._rest(value, last, 100)
            n = self.next_word(last)
        if self.kind(n) == _THOUSAND and value < 1000 and self.kind(last) != _THOUSAND:
            value, last = value * 1000, n
            n = self.next_word(last)
            small = self.small(n) if n >= 0 else None
            if small is not None and small[2]:
                m = self.next_word(small[1])
                if self.kind(m) == _HUNDRED and small[0] < 10:
                    value, last = self._rest(value + small[0] * 100, m, 100)
                else:
                    value, last = value + small[0], small[1]
        return value, last

    def _rest(self, value: int, last: int, below: int) -> tuple[int, int]:
        """``[and] <small>`` after a hundred."""
        n = self.next_word(last)
        if self.kind(n) == _AND:
            n = self.next_word(n)
        small = self.small(n) if n >= 0 else None
        if small is not None and small[0] < below and small[2]:
            return value + small[0], small[1]
        return value, last


def find_runs(text: str) -> list[Run]:
    """Every run of numbers in ``text``, in order."""
    items = _items(text)
    _resolve(items)
    words = _Words(items)
    runs: list[Run] = []
    atoms: list[Atom] = []
    strong: list[bool] = []
    gap: bool | None = None  # separator seen since the last atom: None, weak (False), strong (True)

    def close() -> None:
        if atoms:
            runs.append(Run(tuple(atoms), tuple(strong), "".join(a.digits for a in atoms)))
            atoms.clear()
            strong.clear()

    i = 0
    while i < len(items):
        kind, tok, s, e = items[i]
        if kind in (_WEAK, _STRONG):
            gap = bool(gap) or kind == _STRONG
            i += 1
            continue
        if kind == _NUM:
            atom, last = Atom(tok, s, e, False), i
            n = words.next_word(i)
            if len(tok) <= 2 and words.kind(n) in (_HUNDRED, _THOUSAND):  # "4 hundred", "41 hundred"
                value, last = words.scale(int(tok), i)
                atom = Atom(str(value), s, items[last][3], True)
        elif kind in (_BREAK, _AND, _HOMO):
            close()
            gap = None
            i += 1
            continue
        else:
            digits, last = words.atom(i)
            if not digits:
                close()
                gap = None
                i += 1
                continue
            atom = Atom(digits, s, items[last][3], True)
        if atoms:
            strong.append(bool(gap))
        atoms.append(atom)
        gap = None
        i = last + 1
    close()
    return runs


def is_trailing(text: str, run: Run) -> bool:
    """True when nothing but punctuation or fillers follows ``run`` to the end of ``text``."""
    return _TRAILER.match(text, run.end) is not None


@dataclass(slots=True)
class Normalised:
    """``text`` with every run written in digits, and the map back to the original characters."""

    text: str
    _norm_starts: list[int]
    _pieces: list[tuple[int, int, int, bool]]  # (norm start, orig start, orig end, verbatim)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original characters behind normalised ``[start, end)``."""
        return self._orig(start, False), self._orig(end - 1, True)

    def _orig(self, pos: int, end: bool) -> int:
        k = bisect_right(self._norm_starts, pos) - 1
        nstart, ostart, oend, verbatim = self._pieces[k]
        if verbatim:
            return ostart + (pos - nstart) + (1 if end else 0)
        return oend if end else ostart


def normalise(text: str, runs: list[Run]) -> Normalised:
    """Render ``text`` with its ``runs`` in digits: single digits said in a row are joined
    ("four one five" → 415), a pause between them or any other atom boundary becomes a space."""
    out: list[str] = []
    starts: list[int] = []
    pieces: list[tuple[int, int, int, bool]] = []
    n = 0

    def put(s: str, ostart: int, oend: int, verbatim: bool) -> None:
        nonlocal n
        if s:
            starts.append(n)
            pieces.append((n, ostart, oend, verbatim))
            out.append(s)
            n += len(s)

    prev = 0
    for run in runs:
        put(text[prev : run.start], prev, run.start, True)
        for i, atom in enumerate(run.atoms):
            if i:
                before = run.atoms[i - 1]
                joined = len(before.digits) == 1 and len(atom.digits) == 1 and not run.strong[i - 1]
                put("" if joined else " ", before.end, atom.start, False)
            put(atom.digits, atom.start, atom.end, False)
        prev = run.end
    put(text[prev:], prev, len(text), True)
    if not pieces:
        pieces.append((0, 0, 0, True))
        starts.append(0)
    return Normalised("".join(out), starts, pieces)
