"""LocalAgreement-2: the words two consecutive partial hypotheses agree on become committed."""

from __future__ import annotations

from callscribe.engines.local.textrules import normalise


def _same(a: str, b: str) -> bool:
    return normalise(a) == normalise(b)


class LocalAgreement:
    """Per-utterance partial stabiliser; the committed prefix never shrinks or changes."""

    def __init__(self) -> None:
        self._committed: list[str] = []
        self._previous: list[str] = []

    @property
    def committed(self) -> str:
        return " ".join(self._committed)

    def update(self, hypothesis: str) -> tuple[str, str]:
        """Take a new hypothesis of the whole utterance; return (stable_text, text)."""
        words = hypothesis.split()
        n = len(self._committed)
        tail, previous_tail = words[n:], self._previous[n:]
        agreed = 0
        while agreed < min(len(tail), len(previous_tail)) and _same(tail[agreed], previous_tail[agreed]):
            agreed += 1
        self._committed.extend(tail[:agreed])
        self._previous = words
        tentative = words[len(self._committed) :]
        return self.committed, " ".join([*self._committed, *tentative])
