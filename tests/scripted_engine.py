"""A deterministic in-process engine for gateway tests: it 'hears' bytes, not words.

Each track's audio is cut into utterances of ``utterance_bytes``; while one fills, a partial is
emitted every ``partial_bytes``; when it is full (or at finish) a final follows. The text names the
track and the byte range, so tests can check routing, ordering and that no audio was lost.
"""

from __future__ import annotations

from callscribe.engines.base import Engine, EngineBusy, EngineSession
from callscribe.events import CallInfo, Track, TranscriptEvent


class ScriptedSession(EngineSession):
    def __init__(self, call: CallInfo, utterance_bytes: int, partial_bytes: int) -> None:
        super().__init__(call)
        self.utterance_bytes = utterance_bytes
        self.partial_bytes = partial_bytes
        self.received: dict[Track, bytearray] = {t: bytearray() for t in Track}
        self.pending: dict[Track, int] = dict.fromkeys(Track, 0)
        self.index: dict[Track, int] = dict.fromkeys(Track, 0)
        self.started = self.finished = False

    async def start(self) -> None:
        self.started = True

    def feed(self, track: Track, audio: bytes) -> None:
        buf = self.received[track]
        for byte in range(len(audio)):
            buf.append(audio[byte])
            self.pending[track] += 1
            if self.pending[track] == self.utterance_bytes:
                self._utterance(track, final=True)
            elif self.pending[track] % self.partial_bytes == 0:
                self._utterance(track, final=False)

    def _utterance(self, track: Track, *, final: bool) -> None:
        end = len(self.received[track])
        start = end - self.pending[track]
        self._emit(
            TranscriptEvent(
                call_sid=self.call.call_sid,
                stream_sid=self.call.stream_sid,
                track=track,
                speaker=self.call.speaker(track),
                utterance_id=f"{track}-{self.index[track]}",
                text=f"{track} bytes {start}-{end}",
                is_final=final,
                start=start / 8000,
                end=end / 8000,
                engine="scripted",
            )
        )
        if final:
            self.pending[track] = 0
            self.index[track] += 1

    async def finish(self, timeout: float) -> None:
        for track in Track:
            if self.pending[track]:
                self._utterance(track, final=True)
        self.finished = True
        self._close_events()

    @property
    def counters(self) -> dict[str, int]:
        """The standard ledger: audio in a final is delivered, the rest pending."""
        fed = sum(len(b) for b in self.received.values())
        pending = sum(self.pending.values())
        return {"bytes_fed": fed, "bytes_delivered": fed - pending, "bytes_dropped": 0, "bytes_pending": pending}


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, utterance_bytes: int = 8000, partial_bytes: int = 1600, capacity: int = 100) -> None:
        self.utterance_bytes = utterance_bytes
        self.partial_bytes = partial_bytes
        self.capacity = capacity
        self.sessions: list[ScriptedSession] = []

    def open(self, call: CallInfo) -> ScriptedSession:
        if sum(not s.finished for s in self.sessions) >= self.capacity:
            raise EngineBusy(f"{self.capacity} calls in progress")
        session = ScriptedSession(call, self.utterance_bytes, self.partial_bytes)
        self.sessions.append(session)
        return session
