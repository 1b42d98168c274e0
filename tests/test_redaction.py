"""Redaction (issue #7): spoken forms, precision on ordinary numbers, entities, streaming holds."""

from __future__ import annotations

import re
from itertools import count

import pytest

from callscribe.events import (
    CallEnded,
    CallError,
    CallInfo,
    CallStarted,
    Track,
    TranscriptEvent,
    TriggerFired,
    Word,
)
from callscribe.intelligence.redaction import (
    ALL_ENTITIES,
    NUMBER_MASK,
    Redactor,
    luhn,
    plausible_pan,
    redact_text,
)
from callscribe.intelligence.spoken import find_runs, normalise

VISA = "4111111111111111"
CARD = "4539578763621486"  # Visa, Luhn-valid, digits all different enough to spot leaks
MASK = "[card ending {}]"


# --- spoken numbers


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("4111 1111", "41111111"),
        ("four one one one", "4111"),
        ("oh four", "04"),
        ("double four triple one", "44111"),
        ("forty one eleven", "4111"),
        ("forty-one eleven", "4111"),
        ("41 eleven", "4111"),
        ("four hundred and eleven", "411"),
        ("forty one hundred", "4100"),
        ("four thousand one hundred eleven", "4111"),
        ("one two three for five", "12345"),
        ("4, 0, 9, 7", "4097"),
        ("535, 0. 731", "5350731"),
        ("4111.1111.1111", "411111111111"),
        ("uh four one um one one", "4111"),
    ],
)
def test_spoken_digits(text: str, digits: str) -> None:
    assert [r.digits for r in find_runs(text)] == [digits]


@pytest.mark.parametrize(
    "text",
    [
        "$1,299.99",
        "12.99",
        "10:30",
        "12/25",
        "50%",
        "3rd",
        "1Z999AA10123456784",
        "Oh, I see.",
        "to be or not",
    ],
)
def test_not_digit_runs(text: str) -> None:
    assert find_runs(text) == []


def test_normalise_maps_back() -> None:
    text = "call four one five, five five five, two six seven one now"
    runs = find_runs(text)
    norm = normalise(text, runs)
    assert norm.text == "call 415 555 2671 now"
    s, e = norm.original_span(5, 17)
    assert text[s:e] == "four one five, five five five, two six seven one"


def test_luhn_and_issuers() -> None:
    assert luhn(VISA) and luhn(CARD) and luhn("378282246310005")
    assert not luhn("4111111111111112")
    assert plausible_pan(VISA) and plausible_pan("378282246310005") and plausible_pan("6011111111111117")
    assert not plausible_pan("1234567812345670")  # Luhn-valid, no card issuer starts with 1


# --- cards, every spoken form


def _words(digits: str) -> str:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return " ".join(names[int(d)] for d in digits)


CARD_FORMS = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111. 1111. 1111. 1111.",
    "4111111111111111",
    "4111.1111.1111.1111",
    "four one one one one one one one one one one one one one one one",
    "four one one one, one one one one, one one one one, one one one one",
    "four triple one, double one double one, one one one one, triple one one",
    "forty one eleven eleven eleven eleven eleven eleven eleven",
    "41 eleven 11 11, eleven eleven 1111",
    "4111 one one one one 1111 one one one one",
    "4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.",
    "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    "4111 uh 1111 um 1111 1111",
]


@pytest.mark.parametrize("form", CARD_FORMS)
@pytest.mark.parametrize("carrier", ["my card number is {}", "{}", "sure, it's {} thanks"])
def test_card_forms(form: str, carrier: str) -> None:
    out, counts = redact_text(carrier.format(form))
    assert counts == {"card": 1}
    assert "[card ending 1111]" in out
    assert not re.search(r"\d", out.replace("[card ending 1111]", ""))


@pytest.mark.parametrize(
    ("text", "last4"),
    [
        (_words(CARD), "1486"),
        ("four five three nine, five seven eight seven, six three six two, one four eight six", "1486"),
        ("4539 5787 6362 1486", "1486"),
        ("3782 822463 10005", "0005"),  # Amex 4-6-5
        ("3 7 8 2 8 2 2 4 6 3 1 0 0 0 5", "0005"),
        ("six oh one one, one one one one, one one one one, one one one seven", "1117"),  # Discover
        ("5555 5555 5555 4444", "4444"),  # Mastercard
        ("2221 0000 0000 0009", "0009"),  # Mastercard 2-series
        ("3530 1113 3330 0000", "0000"),  # JCB
        ("3056 9309 0259 04", "5904"),  # Diners 14
        ("4222222222222", "2222"),  # Visa 13
        ("4 9 68 87 19 39 3 2 5 2 4 3", "5243"),  # Whisper's own grouping of a spoken card (corpus)
        ("535, 0. 731, 1. 50, 3, 768, 3, 3.", "6833"),  # ditto
        ("Oh, 4111 1111 1111 1111", "1111"),  # "oh" left out of the card
        ("4111 1111 1111 1111, 123", "1111"),  # card then a code straight after
    ],
)
def test_cards_of_many_brands(text: str, last4: str) -> None:
    out, counts = redact_text(text)
    assert counts.get("card") == 1, out
    assert MASK.format(last4) in out


def test_card_mask_template() -> None:
    assert redact_text("4111 1111 1111 1111", card_mask="<PAN …{last4}>")[0] == "<PAN …1111>"


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "4539 5787 6362 1487",
        "the tracking number is 9400 1000 0000 0000 0000 00",
        "tracking 1Z999AA10123456784",
        "order 1234567812345670",  # Luhn-valid but no issuer starts with 1
        "4111 1111 1111",  # too short
    ],
)
def test_luhn_negatives(text: str) -> None:
    assert "card" not in redact_text(text)[1]


ORDINARY = [
    "It costs $1,299.99 plus $45.50 shipping",
    "The meeting is on March 3rd 2024 at 4 30",
    "My order number is 123456789 and it shipped on the 12th",
    "We sold 1,250,000 units in 2023 and 1,400,000 in 2024",
    "I was born in nineteen eighty four and moved in twenty twenty two",
    "Call back at 10:30 or 11:45 tomorrow",
    "The invoice is 4478 dated 12/05/2024 for 3 items",
    "Room 1205, floor 12, building 4",
    "Give me 2 3 4 minutes",
    "The total came to twelve ninety nine and then forty five fifty",
    "It's 1600 Pennsylvania Avenue, Washington 20500",
    "The package weighs 2.5 kg and measures 30 by 40 by 50",
    "The reference is 7845 1236 9874 5632 1",
    "Order 112-4839201-5938201 was refunded",
    "We are 35 people, 12 of them remote, since 2019",
    "The account was opened in 1998 with 500 dollars",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_not_cards(text: str) -> None:
    out, counts = redact_text(text, entities=("card",))
    assert out == text and counts == {}


# --- other entities


@pytest.mark.parametrize(
    ("text", "entity", "expected"),
    [
        ("the security code is 123", "cvv", "the security code is [security code]"),
        ("CVV: four five six", "cvv", "CVV: [security code]"),
        ("the c v v is 7 8 9", "cvv", "the c v v is [security code]"),
        ("and the CVC on the back is 4321", "cvv", "and the CVC on the back is [security code]"),
        ("the code on the back is one two three", "cvv", "the code on the back is [security code]"),
        ("it expires twelve twenty five", "expiry", "it expires [expiry]"),
        ("expiration date 05/26", "expiry", "expiration date [expiry]"),
        ("exp date is oh five slash twenty six", "expiry", "exp date is [expiry]"),
        ("valid thru December 2026", "expiry", "valid thru [expiry]"),
        ("the expiry is one two two seven", "expiry", "the expiry is [expiry]"),
        ("my social is 123 45 6789", "ssn", "my social is [ssn]"),
        ("123-45-6789", "ssn", "[ssn]"),
        ("one two three, four five, six seven eight nine", "ssn", "[ssn]"),
        (
            "social security number one two three four five six seven eight nine",
            "ssn",
            "social security number [ssn]",
        ),
        ("call me at (415) 555-2671", "phone", "call me at [phone]"),
        ("my number is four one five, five five five, two six seven one", "phone", "my number is [phone]"),
        ("it's +1 212 555 0199", "phone", "it's [phone]"),
        ("reach me on 1 800 275 2273", "phone", "reach me on [phone]"),
        ("write to jane.doe@example.org please", "email", "write to [email] please"),
        ("it's john dot smith at example dot com", "email", "it's [email]"),
        ("j underscore doe at gmail dot com", "email", "[email]"),
        ("my email is jsmith at acme dot co dot uk", "email", "my email is [email]"),
    ],
)
def test_entities(text: str, entity: str, expected: str) -> None:
    out, counts = redact_text(text)
    assert out == expected
    assert counts == {entity: 1}


@pytest.mark.parametrize(
    "text",
    [
        "the code is 123",  # no security-code cue
        "it expires soon, in 2 weeks",
        "my zip code is 94103",
        "look at example dot com",
        "order 123456789",  # 9 digits, no SSN cue or 3-2-4 grouping
        "we meet at 4 30",
    ],
)
def test_no_entity(text: str) -> None:
    assert redact_text(text) == (text, {})


@pytest.mark.parametrize("entity", ALL_ENTITIES)
def test_entity_switches(entity: str) -> None:
    text = (
        "card 4111 1111 1111 1111 expires 12/25 security code 123, social 123-45-6789, "
        "phone (415) 555-2671, mail jo@example.com"
    )
    only = redact_text(text, entities=[entity])[1]
    assert only == {entity: 1}
    others = redact_text(text, entities=[e for e in ALL_ENTITIES if e != entity])[1]
    assert entity not in others and len(others) == len(ALL_ENTITIES) - 1


# --- streaming

_ids = count()


def tev(
    text: str, final: bool, utt: str, *, track: Track = Track.INBOUND, call: str = "CA1"
) -> TranscriptEvent:
    words = tuple(Word(" " + w, i * 0.3, i * 0.3 + 0.25, 0.9) for i, w in enumerate(text.split()))
    return TranscriptEvent(
        call,
        "MZ1",
        track,
        "caller" if track is Track.INBOUND else "agent",
        utt,
        text,
        final,
        0.0,
        1.0,
        words=words,
        stable_text=text if final else " ".join(text.split()[:-1]),
        received_at=float(next(_ids)),
    )


def _surfaces(e: TranscriptEvent) -> list[str]:
    return [e.text, e.stable_text, " ".join(w.word for w in e.words)]


def _assert_no_leak(events: list, card: str) -> None:
    for e in events:
        if not isinstance(e, TranscriptEvent):
            continue
        for surface in _surfaces(e):
            shown = re.sub(r"\[card ending \d{4}\]", "", surface)
            digits = "".join(re.findall(r"\d", shown))
            for i in range(len(card) - 4):
                assert card[i : i + 5] not in digits, (surface, card[i : i + 5])
            assert card[:12] not in digits


@pytest.mark.parametrize(
    ("partials1", "final1", "partials2", "final2"),
    [
        (
            ["my card", "my card number is 4539", "my card number is 4539 5787"],
            "My card number is 4539 5787.",
            ["6362", "6362 1486"],
            "6362 1486, thanks.",
        ),
        (
            [
                "it's four five",
                "it's four five three nine five seven",
                "it's four five three nine five seven eight seven",
            ],
            "It's four five three nine, five seven eight seven, six three",
            ["six two one", "six two one four eight six"],
            "six two one four eight six.",
        ),
        (
            ["4 5 3 9", "4, 5, 3, 9, 5, 7, 8"],
            "4, 5, 3, 9, 5, 7, 8, 7, 6, 3, 6, 2,",
            ["1, 4", "1, 4, 8, 6"],
            "1, 4, 8, 6.",
        ),
    ],
)
def test_card_across_partials_and_two_finals(
    partials1: list[str], final1: str, partials2: list[str], final2: str
) -> None:
    r = Redactor()
    out: list = []
    t = 0.0
    for text in partials1:
        out += r.process(tev(text, False, "u1"), t := t + 0.3)
    held = r.process(tev(final1, True, "u1"), t := t + 0.3)
    assert held == []  # held: it may be a card's first part
    assert r.next_deadline() == pytest.approx(t + 2.5)
    out += r.process(tev("yes go on", True, "a1", track=Track.OUTBOUND), t := t + 0.1)  # other speaker flows
    for text in partials2:
        out += r.process(tev(text, False, "u2"), t := t + 0.3)
    last = r.process(tev(final2, True, "u2"), t := t + 0.3)
    out += last
    _assert_no_leak(out, CARD)
    assert [e.utterance_id for e in last] == ["u1", "u2"]
    assert all("[card ending 1486]" in e.text for e in last)
    assert all(any("[card ending 1486]" in w.word for w in e.words) for e in last)
    assert r.counts["card"] == 1
    assert r.next_deadline() is None


def test_across_finals_output_text() -> None:
    r = Redactor()
    assert r.process(tev("my card number is 4111 1111", True, "u1"), 0.0) == []
    a, b = r.process(tev("1111 1111. Thanks", True, "u2"), 1.0)
    assert a.text == a.stable_text == "my card number is [card ending 1111]"
    assert b.text == "[card ending 1111]. Thanks"
    assert [w.word for w in b.words] == ["[card ending 1111].", " Thanks"]
    assert b.words[0].start == 0.0 and b.words[0].end == 0.55


def test_card_in_four_finals_without_cue() -> None:
    """A card read in four pauses, no cue: the first group (4 digits) is emitted before the
    rest is known; the other three are held and masked."""
    r = Redactor()
    out = r.process(tev("4539.", True, "u1"), 0.0)
    assert [e.text for e in out] == ["4539."]
    assert r.process(tev("5787.", True, "u2"), 0.5) == []
    assert r.process(tev("6362.", True, "u3"), 1.0) == []
    out = r.process(tev("1486.", True, "u4"), 1.5)
    # the pauses between the groups are inside the card: only the last final keeps its full stop
    assert [e.text for e in out] == ["[card ending 1486]", "[card ending 1486]", "[card ending 1486]."]
    assert r.counts == {"card": 1}


def test_card_continued_partial_masked() -> None:
    r = Redactor()
    r.process(tev("the card is 4111 1111 1111", True, "u1"), 0.0)
    (p,) = r.process(tev("11", False, "u2"), 0.5)
    assert p.text == NUMBER_MASK
    (p,) = r.process(tev("1111", False, "u2"), 0.7)
    assert p.text == "[card ending 1111]"
    assert r.counts["partial.card"] == 1


def test_partials_are_conservative() -> None:
    r = Redactor()
    (p,) = r.process(tev("my number is 4111 1111 1", False, "u1"), 0.0)
    assert p.text == "my number is " + NUMBER_MASK
    (p,) = r.process(tev("order 1234", False, "u2"), 0.1)
    assert p.text == "order 1234"  # 4 digits, no card cue: shown
    (f,) = r.process(tev("order 123456789 please", True, "u2"), 0.2)
    assert f.text == "order 123456789 please"  # finals are precise


def test_hold_expires_via_poll() -> None:
    r = Redactor(hold_seconds=2.0)
    assert r.process(tev("the reference is 12345678", True, "u1"), 10.0) == []
    assert r.next_deadline() == 12.0
    assert r.poll(11.9) == []
    (e,) = r.poll(12.0)
    assert e.text == "the reference is 12345678"  # no card cue: emitted as it was
    assert r.next_deadline() is None


def test_hold_expiry_after_card_cue_masks_number() -> None:
    r = Redactor()
    assert r.process(tev("my card is 4111 1111 1111", True, "u1"), 0.0) == []
    (e,) = r.poll(3.0)
    assert e.text == "my card is " + NUMBER_MASK
    assert r.counts == {"number": 1}


def test_not_continued_flushes_then_processes() -> None:
    r = Redactor()
    assert r.process(tev("my card is 4111 1111", True, "u1"), 0.0) == []
    out = r.process(tev("sorry, let me find it", True, "u2"), 0.5)
    assert [e.text for e in out] == ["my card is " + NUMBER_MASK, "sorry, let me find it"]


def test_call_ended_flushes_held_first() -> None:
    r = Redactor()
    r.process(tev("number 4111 1111 1111", True, "u1"), 0.0)
    r.process(tev("number 5555 5555", True, "u1", call="CA2"), 0.0)
    ended = CallEnded("CA1", "MZ1", "stop", 3.0)
    out = r.process(ended, 0.5)
    assert [type(e) for e in out] == [TranscriptEvent, CallEnded]
    assert out[0].utterance_id == "u1" and out[-1] is ended
    assert r.next_deadline() == 2.5  # CA2 still held


def test_other_events_pass_through() -> None:
    r = Redactor()
    info = CallInfo("CA1", "MZ1")
    events = [
        CallStarted(info, "local"),
        CallError("CA1", "MZ1", "x", "y"),
        TriggerFired("CA1", "MZ1", "r", "u1", Track.INBOUND, "caller", "4111", "4111 1111 1111 1111", True),
    ]
    for e in events:
        assert r.process(e, 0.0) == [e]


def test_security_code_answered_in_next_final() -> None:
    r = Redactor()
    r.process(tev("And what's the security code on the back?", True, "a1", track=Track.OUTBOUND), 0.0)
    (e,) = r.process(tev("It's 123.", True, "u1"), 1.0)
    assert e.text == "It's [security code]."
    assert r.counts["cvv"] == 1


def test_counts_finals_and_partials() -> None:
    r = Redactor()
    r.process(tev("call me at 415 555 2671", False, "u1"), 0.0)
    r.process(tev("call me at 415 555 2671 or jo@example.com", True, "u1"), 0.1)
    assert r.counts == {"partial.phone": 1, "phone": 1, "email": 1}


def test_unknown_entity_rejected() -> None:
    with pytest.raises(ValueError):
        Redactor(entities=["card", "iban"])


def test_untouched_event_is_same_object() -> None:
    r = Redactor()
    e = tev("hello there, how can I help", True, "u1")
    assert r.process(e, 0.0)[0] is e
