"""Benchmark of the redaction engine (``callscribe.intelligence.redaction``) on a labelled set.

Reads ``bench/data/redaction_eval.jsonl`` (one ``{"text", "entities": [{"type", "value"}], "source",
"form"}`` per line) and reports, for finals (the stateless, precise path):

- recall and precision per entity (a card / SSN / phone / CVV counts as found when a mask of its
  type covers exactly its digits; an expiry or e-mail when a mask of its type is in the text);
- how many ordinary sentences (no entity) got a card mask — the bar is zero;
- per-event latency of ``Redactor.process`` (p50/p95/p99, µs) over ≥ 10k events: every text
  streamed as growing partials then a final, 8 calls interleaved, card items split across two
  finals of one speaker so that holds happen; and whether any streamed output leaked 5+ digits
  of a card.

``--regenerate`` rewrites the labelled set (seeded; the generator is below, with the spoken forms
mined from the evaluation corpus ``../shared/eval/corpus``). Writes ``bench/results/redaction-<time>.json``.

    .venv/bin/python bench/redaction.py [--regenerate] [--events 12000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import phonenumbers

from callscribe.events import CallEnded, Track, TranscriptEvent, Word
from callscribe.intelligence.redaction import ALL_ENTITIES, Redactor, _phone_matches, luhn, scan
from callscribe.intelligence.spoken import find_runs

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "redaction_eval.jsonl"
CORPUS = ROOT.parent.parent / "shared" / "eval" / "corpus" / "manifest.jsonl"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# --- the generator

# (issuer prefixes, lengths): Visa, Mastercard (51–55, 2-series), Amex, Discover, JCB, Diners, UnionPay, Maestro
BRANDS = [
    (["4"], [16, 16, 16, 13, 19]),
    (["51", "52", "53", "54", "55"], [16]),
    (["2221", "2300", "2500", "2720"], [16]),
    (["34", "37"], [15]),
    (["6011", "65", "644"], [16, 19]),
    (["3528", "3589"], [16]),
    (["36", "38", "300"], [14]),
    (["62"], [16, 17, 18, 19]),
    (["50", "56", "58"], [16, 19]),
]

# What Whisper tiny.en (the embedded engine's model) wrote for the corpus's spoken card and phone
# numbers (digit-sequence-* items, decoded offline at 8 kHz, beam 1 and 5), where every digit was
# right. The grouping Whisper chose is also reused as a template for generated cards below.
WHISPER_CARDS = [
    ("4097970488321324", " 4 0 9 7 9 7 0 4 8 8 3 2 1 3 2 4"),
    ("4097970488321324", " 4, 0, 9, 7, 9, 7, 0, 4, 8, 8, 3, 2, 1, 3, 2, 4."),
    ("4062434847142476", " 4, 0, 6, 2, 4, 3, 4, 8, 4, 7, 1, 4, 2, 4, 7, 6."),
    ("5278337966776056", " 5, 2, 7, 8, 3, 3, 7, 9, 6, 6, 7, 7, 6, 0, 5, 6,"),
    ("5350731150376833", " 535, 0. 731, 1. 50, 3, 768, 3, 3."),
    ("5350731150376833", " 5, 3, 5, 0, 7, 3, 1, 1, 5, 0, 3, 7, 6, 8, 3, 3."),
    ("5547734953713909", " 5, 5, 4, 7, 7, 3, 4, 9, 5, 3, 7, 1, 3, 9, 0, 9."),
    ("4217677042494068", " 4 2 1 7 6 7 7 0 4 2 4 9 4 0 6 8"),
    ("4217677042494068", " 4, 2, 1, 7, 6, 7, 7, 0, 4, 2, 4, 9, 4, 0, 6, 8."),
]
WHISPER_PHONES = [
    ("4688781380", " 468-878-1380"),
    ("4688781380", " 4 6 8 8 7 8 1 3 8 0"),
    ("4344215631", " 4, 3, 4, 4, 2, 1, 5, 6, 3, 1"),
    ("6539022639", " 6 5 3 9 0 2 2 6 3 9"),
    ("8928407584", " eight nine two eight four zero seven five eight four"),
    ("3349505900", " three, three, four, nine, five, zero, five, nine, zero, zero."),
    ("8392912297", " eight three nine two nine one two two nine seven"),
    ("4885099395", " four eight eight five zero nine nine three nine five"),
]
# Whisper's groupings of a spoken 16-digit card: (group sizes, separators) — "4 9 68 87 19 59 3 2 5 2 4 3"
WHISPER_GROUPINGS = [
    ([1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1], [" "] * 11),
    ([3, 1, 3, 1, 2, 1, 3, 1, 1], [", ", ". ", ", ", ". ", ", ", ", ", ", ", ", "]),
]

CARD_CARRIERS = [
    "{}",
    "my card number is {}",
    "sure, it's {}",
    "the card number is {} and it's a visa",
    "okay the long number on the front is {}",
    "yeah {} that's the one",
    "it's a credit card, {}",
    "the number is {}, did you get that",
    "uh let me see, {}",
    "card ending, no wait, the full number is {}",
]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn(body + d))


def make_card(rng: random.Random) -> str:
    prefixes, lengths = rng.choice(BRANDS)
    prefix, length = rng.choice(prefixes), rng.choice(lengths)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def groups_of(digits: str) -> list[str]:
    if len(digits) == 15:
        return [digits[:4], digits[4:10], digits[10:]]
    if len(digits) == 14:
        return [digits[:4], digits[4:10], digits[10:]]
    return [digits[i : i + 4] for i in range(0, len(digits), 4)]


def pair_words(pair: str) -> str:
    """How a two-digit group is said: 41 → forty one, 11 → eleven, 05 → oh five, 40 → forty."""
    a, b = int(pair[0]), int(pair[1])
    if a == 0:
        return f"oh {NAMES[b]}"
    if a == 1:
        return TEENS[b]
    return TENS[a] + ("" if b == 0 else " " + NAMES[b])


def digit_words(group: str, rng: random.Random, oh: bool = False, collapse: bool = False) -> str:
    out: list[str] = []
    i = 0
    while i < len(group):
        d = group[i]
        n = 1
        while i + n < len(group) and group[i + n] == d and n < 3:
            n += 1
        word = "oh" if d == "0" and oh else NAMES[int(d)]
        if collapse and n >= 2:
            out.append(("double " if n == 2 else "triple ") + word)
            i += n
        else:
            out.append(word)
            i += 1
    return " ".join(out)


def render_card(digits: str, form: str, rng: random.Random) -> str:
    gs = groups_of(digits)
    if form == "digits":
        return digits
    if form == "spaced":
        return " ".join(gs)
    if form == "hyphens":
        return "-".join(gs)
    if form == "periods":
        return ". ".join(gs) + "."
    if form == "words":
        return ", ".join(digit_words(g, rng) for g in gs)
    if form == "words-flat":
        return " ".join(NAMES[int(d)] for d in digits)
    if form == "words-oh":
        return ", ".join(digit_words(g, rng, oh=True) for g in gs)
    if form == "double-triple":
        return ", ".join(digit_words(g, rng, oh=rng.random() < 0.5, collapse=True) for g in gs)
    if form == "pairs":
        return ", ".join(
            " ".join(pair_words(g[i : i + 2]) for i in range(0, len(g) - 1, 2))
            + (" " + NAMES[int(g[-1])] if len(g) % 2 else "")
            for g in gs
        )
    if form == "mixed":
        return " ".join(g if i % 2 == 0 else digit_words(g, rng) for i, g in enumerate(gs))
    if form == "whisper-commas":
        return ", ".join(digits) + "."
    if form == "whisper-spaces":
        return " ".join(digits)
    if form == "fillers":
        return " uh ".join(gs[:2]) + " um " + " ".join(gs[2:])
    if form == "whisper-grouping":
        sizes, seps = WHISPER_GROUPINGS[rng.randrange(len(WHISPER_GROUPINGS))]
        if sum(sizes) != len(digits):
            return " ".join(digits)
        parts, pos = [], 0
        for n in sizes:
            parts.append(digits[pos : pos + n])
            pos += n
        return "".join(p + (seps[i] if i < len(seps) else "") for i, p in enumerate(parts))
    raise ValueError(form)


CARD_FORMS = [
    "digits", "spaced", "hyphens", "periods", "words", "words-flat", "words-oh", "double-triple",
    "pairs", "mixed", "whisper-commas", "whisper-spaces", "fillers", "whisper-grouping",
]  # fmt: skip


def valid_phone(rng: random.Random) -> str:
    while True:
        digits = rng.choice(["212", "415", "646", "312", "617", "303", "206", "713", "404", "512"]) + "".join(
            rng.choice("0123456789") for _ in range(7)
        )
        if digits[3] in "01":
            continue
        if phonenumbers.is_valid_number(phonenumbers.parse(digits, "US")):
            return digits


def render_phone(d: str, rng: random.Random) -> tuple[str, str]:
    form = rng.choice(
        ["paren", "dashes", "dots", "spaces", "plain", "plus1", "words", "words-groups", "commas"]
    )
    a, b, c = d[:3], d[3:6], d[6:]
    text = {
        "paren": f"({a}) {b}-{c}",
        "dashes": f"{a}-{b}-{c}",
        "dots": f"{a}.{b}.{c}",
        "spaces": f"{a} {b} {c}",
        "plain": d,
        "plus1": f"+1 {a} {b} {c}",
        "words": " ".join(NAMES[int(x)] for x in d),
        "words-groups": ", ".join(" ".join(NAMES[int(x)] for x in g) for g in (a, b, c)),
        "commas": ", ".join(d),
    }[form]
    return text, form


def make_ssn(rng: random.Random) -> str:
    while True:
        d = f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if d[:3] != "666":
            return d


def render_ssn(d: str, rng: random.Random) -> tuple[str, str]:
    a, b, c = d[:3], d[3:5], d[5:]
    form = rng.choice(["dashes", "spaces", "cue-plain", "words-groups", "cue-words"])
    text = {
        "dashes": f"{a}-{b}-{c}",
        "spaces": f"{a} {b} {c}",
        "cue-plain": d,
        "words-groups": ", ".join(" ".join(NAMES[int(x)] for x in g) for g in (a, b, c)),
        "cue-words": " ".join(NAMES[int(x)] for x in d),
    }[form]
    carrier = (
        "my social security number is {}"
        if form.startswith("cue")
        else rng.choice(["my social is {}", "it's {}", "{}", "the SSN is {}"])
    )
    return carrier.format(text), form


FIRST = ["john", "jane", "maria", "li", "ahmed", "sara", "tom", "j", "k", "olga"]
LAST = ["smith", "doe", "garcia", "wang", "khan", "miller", "nguyen", "brown"]
DOMAINS = ["gmail", "yahoo", "example", "acme", "outlook", "hotmail", "contoso", "icloud"]
TLDS = ["com", "org", "net", "io", "co dot uk"]


def render_email(rng: random.Random) -> tuple[str, str, str]:
    first, last, dom, tld = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS), rng.choice(TLDS)
    sep_w, sep_c = rng.choice([("dot", "."), ("underscore", "_"), ("dash", "-"), ("", "")])
    num = str(rng.randint(1, 99)) if rng.random() < 0.3 else ""
    value = f"{first}{sep_c}{last}{num}@{dom}.{tld.replace(' dot ', '.')}"
    form = rng.choice(["written", "spoken", "spoken", "mixed"])
    if form == "written":
        text = value
    else:
        local = f"{first} {sep_w} {last}" if sep_w else f"{first}{last}"
        local += f" {num}" if num and form == "mixed" else num
        domain = f"{dom} dot {tld}" if form == "spoken" else f"{dom}.{tld.replace(' dot ', '.')}"
        text = f"{local} at {domain}"
    carrier = rng.choice(
        ["my email is {}", "it's {}", "send it to {} please", "the e-mail address is {}", "{}"]
    )
    return carrier.format(text), value, form


MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def render_expiry(rng: random.Random) -> tuple[str, str, str]:
    m, y = rng.randint(1, 12), rng.randint(25, 33)
    value = f"{m:02d}/{y}"
    form = rng.choice(["slash", "words", "oh-words", "month-year", "digits-words", "slash-full"])
    text = {
        "slash": f"{m:02d}/{y}",
        "slash-full": f"{m}/20{y}",
        "words": f"{pair_words(f'{m:02d}') if m >= 10 else NAMES[m]} {pair_words(str(y))}",
        "oh-words": f"oh {NAMES[m]} {pair_words(str(y))}"
        if m < 10
        else f"{pair_words(str(m))} {pair_words(str(y))}",
        "month-year": f"{MONTHS[m - 1]} 20{y}",
        "digits-words": " ".join(NAMES[int(x)] for x in f"{m:02d}{y}"),
    }[form]
    cue = rng.choice(
        ["it expires {}", "expiration date is {}", "the exp date is {}", "valid thru {}", "expiry {}"]
    )
    return cue.format(text), value, form


def render_cvv(rng: random.Random) -> tuple[str, str, str]:
    n = 4 if rng.random() < 0.2 else 3
    value = "".join(rng.choice("0123456789") for _ in range(n))
    form = rng.choice(["digits", "words", "spaced"])
    said = {"digits": value, "words": " ".join(NAMES[int(x)] for x in value), "spaced": " ".join(value)}[form]
    cue = rng.choice(
        [
            "the security code is {}",
            "CVV {}",
            "the CVC is {}",
            "the code on the back is {}",
            "security code, {}",
        ]
    )
    return cue.format(said), value, form


def not_luhn(digits: str) -> str:
    return digits if not luhn(digits) else digits[:-1] + str((int(digits[-1]) + 1) % 10)


def ordinary(rng: random.Random) -> list[tuple[str, str]]:
    """Sentences full of numbers that are not PII: (text, form)."""
    r = rng.randint
    out: list[tuple[str, str]] = []
    for _ in range(6):
        out += [
            (f"It costs ${r(1, 9)},{r(100, 999)}.{r(10, 99)} plus ${r(5, 99)}.{r(10, 99)} shipping", "price"),
            (f"That's {r(2, 99)} dollars and {r(10, 99)} cents", "price"),
            (f"The total came to {pair_words(str(r(20, 99)))} {pair_words(str(r(20, 99)))}", "price-words"),
            (
                f"The appointment is on {rng.choice(MONTHS)} {r(1, 28)}th {r(1990, 2030)} at {r(1, 12)} {r(10, 59)}",
                "date",
            ),
            (f"We met on {r(1, 12)}/{r(1, 28)}/{r(2019, 2026)} around {r(1, 12)}:{r(10, 59)}", "date"),
            (f"My order number is {r(100000, 99999999)}", "order"),
            (f"Order {r(100, 999)}-{r(1000000, 9999999)}-{r(1000000, 9999999)} was refunded", "order-amazon"),
            (f"The tracking number is {not_luhn(str(r(10**15, 10**16 - 1)))}", "tracking-16"),
            (f"Tracking {' '.join(groups_of(not_luhn('94' + str(r(10**19, 10**20 - 1)))))}", "tracking-usps"),
            (f"FedEx tracking {r(1000, 9999)} {r(1000, 9999)} {r(1000, 9999)}", "tracking-12"),
            (f"It's 1Z{r(100, 999)}AA{r(10**9, 10**10 - 1)}", "tracking-ups"),
            (f"I need {r(2, 40)} boxes, {r(2, 12)} pallets and {r(100, 900)} labels", "quantity"),
            (
                f"I was born in {rng.choice(['nineteen', 'twenty'])} {pair_words(str(r(10, 99)))}",
                "year-words",
            ),
            (f"We moved here in {r(1970, 2024)} and again in {r(1970, 2024)}", "years"),
            (f"Call back at {NAMES[r(1, 9)]} {pair_words(str(r(15, 45)))} tomorrow", "time-words"),
            (f"Room {r(100, 1999)}, floor {r(1, 30)}, building {r(1, 9)}", "address"),
            (f"It's {r(10, 9999)} Main Street, zip code {r(10000, 99999)}", "address"),
            (f"The reference is {not_luhn(str(r(10**16, 10**17 - 1)))}", "reference-17"),
            (f"Invoice {r(1000, 9999)} for {r(2, 20)} items at {r(10, 99)}.{r(10, 99)} each", "invoice"),
            (f"Give me {r(2, 9)} {r(2, 9)} {r(2, 9)} minutes", "small-digits"),
            (
                f"Flight {rng.choice(['UA', 'DL', 'AA'])}{r(100, 2999)} leaves gate {r(1, 60)} at {r(1, 12)}:{r(10, 59)}",
                "flight",
            ),
            (
                f"We sold {r(1, 9)},{r(100, 999)},{r(100, 999)} units, up {r(2, 40)}% on {r(2015, 2024)}",
                "stats",
            ),
            (f"The account was opened in {r(1990, 2024)} with {r(100, 5000)} dollars", "account"),
            (
                f"Policy number {rng.choice('ABCDEFGH')}{r(10**7, 10**8 - 1)} renews in {r(2, 11)} months",
                "policy",
            ),
            (f"Version {r(1, 9)}.{r(0, 20)}.{r(0, 40)} fixed {r(2, 99)} bugs", "version"),
        ]
    return out


def corpus_rows() -> list[dict]:
    """Spoken card and phone numbers and read sentences (with and without numbers) from the corpus."""
    rows: list[dict] = []
    if not CORPUS.exists():
        return rows
    items = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    for it in items:
        if it["category"] == "digit-sequence-card":
            rows.append(
                row(f"my card number is {it['text']}", [("card", it["digits"])], "corpus", "card-words")
            )
            rows.append(row(it["text"], [("card", it["digits"])], "corpus", "card-words"))
        elif it["category"] == "digit-sequence-phone" and phonenumbers.is_valid_number(
            phonenumbers.parse(it["digits"], "US")
        ):
            rows.append(
                row(f"my phone number is {it['text']}", [("phone", it["digits"])], "corpus", "phone-words")
            )
    sentences = [it["text"] for it in items if it["category"] in ("read-sentence", "command")]
    with_numbers = [
        s for s in sentences if re.search(r"\d|twenty|forty|hundred|fifteen|ten |five five", s, re.I)
    ]
    rows += [row(s, [], "corpus", "read-sentence-numbers") for s in with_numbers]
    rows += [row(s, [], "corpus", "read-sentence") for s in sentences[:: max(1, len(sentences) // 40)][:40]]
    return rows


def row(text: str, entities: list[tuple[str, str]], source: str, form: str) -> dict:
    return {
        "text": text,
        "entities": [{"type": t, "value": v} for t, v in entities],
        "source": source,
        "form": form,
    }


def generate(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for digits, text in WHISPER_CARDS:
        rows.append(row(text.strip(), [("card", digits)], "whisper-tiny.en", "whisper"))
    for digits, text in WHISPER_PHONES:
        if phonenumbers.is_valid_number(phonenumbers.parse(digits, "US")):
            rows.append(
                row(f"my number is {text.strip()}", [("phone", digits)], "whisper-tiny.en", "whisper")
            )
    for i in range(280):
        card = make_card(rng)
        form = CARD_FORMS[i % len(CARD_FORMS)]
        said = render_card(card, form, rng)
        text = rng.choice(CARD_CARRIERS).format(said)
        ents = [("card", card)]
        if rng.random() < 0.15:
            exp_text, exp, _ = render_expiry(rng)
            text += ", " + exp_text
            ents.append(("expiry", exp))
        if rng.random() < 0.15:
            cvv_text, cvv, _ = render_cvv(rng)
            text += " and " + cvv_text
            ents.append(("cvv", cvv))
        rows.append(row(text, ents, "generated", f"card-{form}"))
    for _ in range(40):
        d = valid_phone(rng)
        said, form = render_phone(d, rng)
        carrier = rng.choice(
            ["call me at {}", "my number is {}", "it's {}", "you can reach me on {} after five"]
        )
        rows.append(row(carrier.format(said), [("phone", d)], "generated", f"phone-{form}"))
    for _ in range(30):
        d = make_ssn(rng)
        text, form = render_ssn(d, rng)
        rows.append(row(text, [("ssn", d)], "generated", f"ssn-{form}"))
    for _ in range(30):
        text, value, form = render_email(rng)
        rows.append(row(text, [("email", value)], "generated", f"email-{form}"))
    for _ in range(30):
        text, value, form = render_expiry(rng)
        rows.append(row(text, [("expiry", value)], "generated", f"expiry-{form}"))
    for _ in range(30):
        text, value, form = render_cvv(rng)
        rows.append(row(text, [("cvv", value)], "generated", f"cvv-{form}"))
    rows += [row(t, [], "generated", f"ordinary-{f}") for t, f in ordinary(rng)]
    rows += corpus_rows()
    return rows


# --- scoring


def _digits(text: str) -> str:
    return "".join(r.digits for r in find_runs(text)) or "".join(re.findall(r"\d", text))


def evaluate(rows: list[dict]) -> dict:
    tp: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct_pred: Counter[str] = Counter()
    ordinary = ordinary_card = ordinary_any = 0
    misses: list[dict] = []
    false_cards: list[str] = []
    for r in rows:
        text = r["text"]
        spans = scan([text]).spans
        found = [(s.entity, text[s.start : s.end], s) for s in spans]
        for s in spans:
            predicted[s.entity] += 1
        used: set[int] = set()
        for ent in r["entities"]:
            labelled[ent["type"]] += 1
            hit = None
            for k, (etype, covered, span) in enumerate(found):
                if etype != ent["type"] or k in used:
                    continue
                if _matches(etype, ent["value"], covered, span):
                    hit = k
                    break
            if hit is None:
                misses.append({"text": text, "entity": ent, "found": [(e, c) for e, c, _ in found]})
            else:
                used.add(hit)
                tp[ent["type"]] += 1
        for k, (etype, _, _) in enumerate(found):
            if k in used:
                correct_pred[etype] += 1
        if not r["entities"]:
            ordinary += 1
            if any(e == "card" for e, _, _ in found):
                ordinary_card += 1
                false_cards.append(text)
            if found:
                ordinary_any += 1
    per = {
        e: {
            "labelled": labelled[e],
            "found": tp[e],
            "recall": tp[e] / labelled[e] if labelled[e] else None,
            "masked": predicted[e],
            "precision": correct_pred[e] / predicted[e] if predicted[e] else None,
        }
        for e in ALL_ENTITIES
    }
    return {
        "rows": len(rows),
        "entities": per,
        "ordinary_sentences": ordinary,
        "ordinary_masked_as_card": ordinary_card,
        "ordinary_masked_any": ordinary_any,
        "false_cards": false_cards,
        "misses": misses,
    }


def _matches(etype: str, value: str, covered: str, span) -> bool:  # type: ignore[no-untyped-def]
    if etype == "card":
        return span.value == value
    if etype in ("ssn", "cvv"):
        return _digits(covered) == value
    if etype == "phone":
        return _digits(covered)[-10:] == value[-10:]
    return True  # expiry, e-mail: a mask of the type in the sentence


# --- latency and streaming leaks


def stream_events(rows: list[dict], n_events: int, rng: random.Random) -> list[TranscriptEvent | CallEnded]:
    """Growing partials then a final per text; card texts sometimes split into two finals."""
    events: list[TranscriptEvent | CallEnded] = []
    calls = [f"CA{i:02d}" for i in range(8)]
    utt = 0
    while len(events) < n_events:
        for r in rows:
            call = rng.choice(calls)
            track = rng.choice([Track.INBOUND, Track.OUTBOUND])
            words = r["text"].split()
            split = len(words)
            if any(e["type"] == "card" for e in r["entities"]) and len(words) > 3 and rng.random() < 0.5:
                split = len(words) // 2
            for part in (words[:split], words[split:]):
                if not part:
                    continue
                utt += 1
                for k in range(1, len(part)):
                    events.append(_event(call, track, f"u{utt}", part[:k], False))
                events.append(_event(call, track, f"u{utt}", part, True))
            if len(events) >= n_events:
                break
    events += [CallEnded(c, "MZ", "stop", 60.0) for c in calls]
    return events


def _event(call: str, track: Track, utt: str, words: list[str], final: bool) -> TranscriptEvent:
    text = " ".join(words)
    ws = tuple(Word(" " + w, 0.3 * i, 0.3 * i + 0.25, 0.9) for i, w in enumerate(words))
    return TranscriptEvent(
        call, "MZ", track, "x", utt, text, final, 0.0, 1.0, words=ws, stable_text=text if final else ""
    )


def latency(rows: list[dict], n_events: int, seed: int, repeat: int) -> dict:
    """Time ``Redactor.process`` per event; ``repeat`` passes, the quietest reported (the machine is
    shared, so a pass can be slowed by other processes: every pass's p99 is kept in the result)."""
    events = stream_events(rows, n_events, random.Random(seed))
    warm = Redactor()  # first use loads phonenumbers' metadata and compiles patterns: not per-event cost
    for i, e in enumerate(stream_events(rows[::7], 1000, random.Random(seed + 1))):
        warm.process(e, i * 0.05)
    cards = {e["value"] for row in rows for e in row["entities"] if e["type"] == "card"}
    heads = {c[:12] for c in cards}
    passes = []
    for _ in range(repeat):
        _phone_matches.cache_clear()  # each pass starts with a cold cache
        r = Redactor()
        times: list[float] = []
        leaks = outputs = 0
        now = 0.0
        for e in events:
            now += 0.05
            t0 = time.perf_counter_ns()
            out = r.process(e, now)
            times.append((time.perf_counter_ns() - t0) / 1000)
            outputs += len(out)
            leaks += _leaks(out, heads)  # checked as they come: keeping 12k outputs alive would slow GC
        times.sort()
        q = statistics.quantiles(times, n=100)
        passes.append(
            {
                "p50_us": q[49],
                "p95_us": q[94],
                "p99_us": q[98],
                "max_us": times[-1],
                "mean_us": statistics.fmean(times),
                "outputs": outputs,
                "card_leaks": leaks,
                "counts": r.counts,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
        )
    best = min(passes, key=lambda p: p["p99_us"])
    return {
        "events": len(events),
        **best,
        "card_leaks": max(p["card_leaks"] for p in passes),
        "p99_us_all_passes": [round(p["p99_us"]) for p in passes],
        "gc": "enabled",
    }


def _leaks(events: list, heads: set[str]) -> int:
    """Outputs showing the first 12 digits (``heads``) of a card of the set, in any spacing."""
    n = 0
    for e in events:
        if isinstance(e, TranscriptEvent):
            for surface in (e.text, e.stable_text, " ".join(w.word for w in e.words)):
                digits = "".join(re.findall(r"\d", re.sub(r"\[card ending \d{4}\]", "", surface)))
                if any(h in digits for h in heads):
                    n += 1
    return n


# --- report


def fmt(v: float | None, spec: str = ".1%") -> str:
    return "—" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    ev, lat = result["eval"], result["latency"]
    lines = [
        f"Labelled set: {ev['rows']} texts ({ev['ordinary_sentences']} ordinary sentences without PII).",
        "",
        "| entity | labelled | found | recall | masks | precision |",
        "|---|---|---|---|---|---|",
    ]
    for e, m in ev["entities"].items():
        lines.append(
            f"| {e} | {m['labelled']} | {m['found']} | {fmt(m['recall'])} | {m['masked']} | {fmt(m['precision'])} |"
        )
    lines += [
        "",
        "| ordinary sentences | masked as a card | masked as anything |",
        "|---|---|---|",
        f"| {ev['ordinary_sentences']} | {ev['ordinary_masked_as_card']} | {ev['ordinary_masked_any']} |",
        "",
        "| events | p50 (µs) | p95 (µs) | p99 (µs) | max (µs) | streamed outputs showing a card's first 12 digits |",
        "|---|---|---|---|---|---|",
        f"| {lat['events']} | {lat['p50_us']:.0f} | {lat['p95_us']:.0f} | {lat['p99_us']:.0f} | {lat['max_us']:.0f} "
        f"| {lat['card_leaks']} |",
        "",
        f"Quietest of {len(lat['p99_us_all_passes'])} passes; p99 of every pass (µs): "
        f"{', '.join(map(str, lat['p99_us_all_passes']))}; load average {' '.join(lat['loadavg'])} (2 vCPU, shared).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regenerate", action="store_true", help="rewrite bench/data/redaction_eval.jsonl first")
    ap.add_argument("--events", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes (the quietest is reported)")
    args = ap.parse_args()
    if args.regenerate or not DATA.exists():
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generate(args.seed)))
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    result = {
        "command": "bench/redaction.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "eval": evaluate(rows),
        "latency": latency(rows, args.events, args.seed, args.repeat),
    }
    print(markdown(result))
    ev = result["eval"]
    for m in ev["misses"][:15]:
        print("miss:", m)
    for t in ev["false_cards"][:15]:
        print("false card:", t)
    out = ROOT / "results" / f"redaction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"\nwrote {out.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
