"""Benchmark of the embedded engine ``local`` on real speech, streamed at the real pace.

Audio comes from the evaluation corpus (``../shared/eval/corpus``), converted to 8 kHz μ-law as
Twilio sends it, and is fed in 20 ms frames on the wall clock through :class:`LocalEngine`. It
measures, per spoken utterance (true bounds = first/last 20 ms frame above ``--energy-dbfs``):

- end of speech → final (from the wall time the last loud frame was fed to the final's arrival);
- speech start → first transcript (partial) of that utterance; gaps between partials;
- WER of the streamed finals next to the same model decoding each whole file offline;
- CPU seconds per audio second; the machine's foreign load (``/proc/stat`` minus this process);
- a sweep of N concurrent two-speaker calls (inbound/outbound take turns like a conversation);
- whether each spoken card / phone number (``fsdd_sequences``) comes out as one utterance.

Writes ``bench/results/engine-<time>.{json,md}`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before ctranslate2 loads (see decoder.py)

import numpy as np
from jiwer import wer
from whisper_normalizer.english import EnglishTextNormalizer

from callscribe.audio import mulaw
from callscribe.audio.resample import resample
from callscribe.audio.wav import wav_to_ulaw
from callscribe.config import Settings
from callscribe.engines.local.engine import LocalEngine
from callscribe.events import CallInfo, Track, TranscriptEvent

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT.parent.parent / "shared" / "eval" / "corpus"
FRAME = 160
normalise = EnglishTextNormalizer()


# --- audio material


@dataclass
class Clip:
    id: str
    text: str
    ulaw: bytes
    speech: tuple[int, int]  # first / last+1 loud frame inside the clip
    digits: str = ""


@dataclass
class Placed:
    """A clip placed on a track at ``offset`` frames."""

    clip: Clip
    track: Track
    offset: int

    @property
    def start(self) -> int:
        return self.offset + self.clip.speech[0]

    @property
    def end(self) -> int:
        return self.offset + self.clip.speech[1]


def load_clips(corpus: Path, categories: set[str], energy_dbfs: float, max_seconds: float) -> list[Clip]:
    clips = []
    for line in (corpus / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["category"] not in categories or item["seconds"] > max_seconds:
            continue
        ulaw = wav_to_ulaw(corpus / item["path"])
        pcm = mulaw.decode(ulaw)[: len(ulaw) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
        level = 20 * np.log10(np.maximum(np.sqrt((pcm**2).mean(axis=1)) / 32768, 1e-7))
        loud = np.flatnonzero(level > energy_dbfs)
        if loud.size:
            clips.append(
                Clip(
                    item["id"], item["text"], ulaw, (int(loud[0]), int(loud[-1]) + 1), item.get("digits", "")
                )
            )
    return clips


def build_track(parts: list[tuple[Clip, Track]], rng: random.Random, gap: tuple[float, float], lead: float):
    """Lay clips out in turn order; each track gets silence where the other speaks."""
    placed: list[Placed] = []
    t = int(lead * 50)
    for clip, track in parts:
        placed.append(Placed(clip, track, t))
        t += len(clip.ulaw) // FRAME + int(rng.uniform(*gap) * 50)
    total = t + 100
    audio = {tr: bytearray(bytes([mulaw.SILENCE]) * total * FRAME) for tr in {p.track for p in placed}}
    for p in placed:
        audio[p.track][p.offset * FRAME : p.offset * FRAME + len(p.clip.ulaw)] = p.clip.ulaw
    return placed, {tr: bytes(a) for tr, a in audio.items()}, total


# --- load monitor


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


class LoadMonitor:
    """Samples machine-wide busy CPU and this process's CPU; the difference is foreign load."""

    def __init__(self, period: float = 1.0) -> None:
        self.samples: list[float] = []
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _busy() -> float:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        busy, own, t = self._busy(), time.process_time(), time.monotonic()
        while not self._stop.wait(self._period):
            b, o, n = self._busy(), time.process_time(), time.monotonic()
            self.samples.append(max(0.0, ((b - busy) - (o - own)) / (n - t)))
            busy, own, t = b, o, n

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else 0.0

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


# --- streaming one call


@dataclass
class CallRun:
    placed: list[Placed]
    feed_times: dict[Track, list[float]] = field(default_factory=dict)  # wall time frame i was fed
    events: list[TranscriptEvent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def stream_call(
    engine: LocalEngine, sid: str, placed, audio: dict[Track, bytes], frames: int, delay: float
):
    await asyncio.sleep(delay)
    run = CallRun(placed, {tr: [] for tr in audio})
    session = engine.open(CallInfo(sid, "MZ" + sid, tracks=tuple(audio)))
    await session.start()

    async def collect() -> None:
        async for e in session.events():
            if isinstance(e, TranscriptEvent):
                run.events.append(e)
            else:
                run.errors.append(f"{e.code}: {e.message}")

    collector = asyncio.create_task(collect())
    t0 = time.time()
    for i in range(frames):
        wait = t0 + (i + 1) * 0.02 - time.time()  # frame i is complete 20 ms after it started
        if wait > 0:
            await asyncio.sleep(wait)
        for tr, a in audio.items():
            session.feed(tr, a[i * FRAME : (i + 1) * FRAME])
            run.feed_times[tr].append(time.time())
    await session.finish(timeout=10)
    await collector
    return run


async def run_calls(
    engine: LocalEngine, calls: list[tuple[list[Placed], dict[Track, bytes], int]], stagger: float
):
    tasks = [stream_call(engine, f"CA{i:03d}", p, a, n, i * stagger) for i, (p, a, n) in enumerate(calls)]
    return await asyncio.gather(*tasks)


# --- scoring


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def overlaps(e: TranscriptEvent, p: Placed) -> float:
    return min(e.end, p.offset * 0.02 + len(p.clip.ulaw) / 8000) - max(e.start, p.offset * 0.02)


_DIGIT = re.compile(r"\d|zero|oh|one|two|three|four|five|six|seven|eight|nine")
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]


def digits_of(text: str) -> str:
    """The digits spoken in ``text``, space-separated ("4 9 6 8" / "four nine six eight")."""
    found = _DIGIT.findall(text.lower())
    return " ".join(d if d.isdigit() else str(_DIGIT_WORDS.index(d) % 10) for d in found)


def reference(clip: Clip) -> str:
    return " ".join(clip.digits) if clip.digits else normalise(clip.text)


def hypothesis(clip: Clip, text: str) -> str:
    return digits_of(text) if clip.digits else normalise(text)


def score_calls(runs: list[CallRun]) -> dict:
    final_lat, first_partial, gaps, refs, hyps = [], [], [], [], []
    per_utt_finals = []
    for run in runs:
        by_track: dict[Track, list[TranscriptEvent]] = {}
        for e in run.events:
            by_track.setdefault(e.track, []).append(e)
        for p in run.placed:
            mine = [e for e in by_track.get(p.track, []) if overlaps(e, p) > 0]
            finals = sorted((e for e in mine if e.is_final), key=lambda e: e.start)
            # a final belongs to the clip it overlaps most
            finals = [
                f
                for f in finals
                if max(run.placed, key=lambda q: overlaps(f, q) if q.track is f.track else -1) is p
            ]
            refs.append(reference(p.clip))
            hyps.append(hypothesis(p.clip, " ".join(f.text for f in finals)))
            per_utt_finals.append(len(finals))
            fed = run.feed_times[p.track]
            if finals:
                final_lat.append(max(f.received_at for f in finals) - fed[p.end - 1])
            if mine:
                first_partial.append(min(e.received_at for e in mine) - (fed[p.start] - 0.02))
            partials: dict[str, list[float]] = {}
            for e in mine:
                if not e.is_final:
                    partials.setdefault(e.utterance_id, []).append(e.received_at)
            for times in partials.values():
                gaps.extend(np.diff(sorted(times)).tolist())
    return {
        "utterances": len(refs),
        "final_p50": pct(final_lat, 50),
        "final_p95": pct(final_lat, 95),
        "final_max": max(final_lat, default=None),
        "first_partial_p50": pct(first_partial, 50),
        "first_partial_p95": pct(first_partial, 95),
        "partial_gap_p50": pct(gaps, 50),
        "partial_gap_p90": pct(gaps, 90),
        "wer": wer(refs, hyps) if refs else None,
        "split_utterances": sum(n > 1 for n in per_utt_finals),
        "missing_finals": sum(n == 0 for n in per_utt_finals),
        "errors": sum(len(r.errors) for r in runs),
    }


def offline_text(engine: LocalEngine, clip: Clip, beam: int) -> str:
    """The same model decoding the whole file (through the same μ-law channel) with transcribe()."""
    model = engine._decoder._model  # the loaded WhisperModel: the comparison must use the same weights
    audio = resample(mulaw.decode_float(clip.ulaw), 8000, 16000)
    segments, _ = model.transcribe(
        audio, language="en", beam_size=beam, condition_on_previous_text=False, vad_filter=False
    )
    return " ".join(s.text for s in segments)


# --- scenarios


def conversation(pool: list[Clip], rng: random.Random, seconds: float, lead: float):
    """Caller and agent take turns with 0.4–1.2 s between turns, for about ``seconds``."""
    parts, total, k = [], 0.0, 0
    while total < seconds:
        clip = pool[rng.randrange(len(pool))]
        parts.append((clip, Track.INBOUND if k % 2 == 0 else Track.OUTBOUND))
        total += len(clip.ulaw) / 8000 + 0.8
        k += 1
    return build_track(parts, rng, (0.4, 1.2), lead)


async def bench(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    sentences = load_clips(args.corpus, {"read-sentence"}, args.energy_dbfs, 12.0)
    numbers = load_clips(args.corpus, {"digit-sequence-card", "digit-sequence-phone"}, args.energy_dbfs, 20.0)
    rng.shuffle(sentences)
    settings = Settings(_env_file=None, local_model=args.model, local_max_calls=max([*args.calls, 4]))
    engine = LocalEngine(settings)
    t = time.perf_counter()
    await engine.startup()
    out: dict = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg()},
        "settings": {k: v for k, v in settings.masked().items() if k.startswith("LOCAL_")},
        "load_seconds": time.perf_counter() - t,
        "rows": [],
    }

    row_clips: list[list[Clip]] = []

    async def row(name: str, calls, stagger: float) -> dict:
        cpu0, t0 = time.process_time(), time.perf_counter()
        with LoadMonitor() as load:
            runs = await run_calls(engine, calls, stagger)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        track_seconds = sum(frames * 0.02 * len(audio) for _, audio, frames in calls)
        r = {
            "row": name,
            **score_calls(runs),
            "cpu_cores": cpu / wall,
            "cpu_s_per_audio_s": cpu / track_seconds,
        }
        r.update(foreign_cores_mean=load.mean, foreign_cores_peak=load.peak, wall_s=wall)
        print(json.dumps(r), file=sys.stderr, flush=True)
        out["rows"].append(r)
        row_clips.append([p.clip for placed, _, _ in calls for p in placed])
        return r

    # 1. one call, one speaker: a sequence of sentences with pauses
    single, total = [], 0.0
    for c in sentences:
        if total > args.single_seconds:
            break
        single.append(c)
        total += len(c.ulaw) / 8000
    await row("1 call, 1 track", [build_track([(c, Track.INBOUND) for c in single], rng, (0.8, 1.5), 0.5)], 0)

    # 2. concurrent two-speaker calls
    for n in args.calls:
        calls = [conversation(sentences, rng, args.call_seconds, lead=0.5) for _ in range(n)]
        await row(f"{n} calls × 2 tracks", calls, args.stagger)

    # 3. card / phone numbers: is each one utterance? (4 calls × 2 tracks, items in turn)
    if args.numbers:
        calls = []
        for k in range(4):
            parts = [
                (c, Track.INBOUND if i % 2 == 0 else Track.OUTBOUND) for i, c in enumerate(numbers[k::4])
            ]
            calls.append(build_track(parts, rng, (1.5, 2.0), 0.5))
        await row("numbers (digit WER): 4 calls × 2 tracks", calls, 0.7)

    # offline reference, after the real-time rows so it cannot disturb them
    beam = settings.local_final_beam
    texts = {c.id: offline_text(engine, c, beam) for c in {c.id: c for cs in row_clips for c in cs}.values()}
    for r, clips in zip(out["rows"], row_clips, strict=True):
        r["offline_wer"] = wer([reference(c) for c in clips], [hypothesis(c, texts[c.id]) for c in clips])
        r["wer_rel_diff"] = (r["wer"] - r["offline_wer"]) / r["offline_wer"] if r["offline_wer"] else None
    out["machine"]["loadavg_end"] = loadavg()
    await engine.shutdown()
    return out


def markdown(result: dict) -> str:
    def f(v, spec=".2f"):
        return "—" if v is None else format(v, spec)

    lines = [
        "| row | utts | end of speech → final p50 / p95 / max (s) | speech start → first partial p50 / p95 (s) "
        "| partial gap p50 / p90 (s) | WER streamed | WER offline (rel. diff) | split / missing | CPU cores "
        "| CPU-s per audio-s | foreign cores mean / peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        off = f"{f(r['offline_wer'], '.1%')} ({f(r['wer_rel_diff'], '+.0%')})" if "offline_wer" in r else "—"
        lines.append(
            f"| {r['row']} | {r['utterances']} | {f(r['final_p50'])} / {f(r['final_p95'])} / {f(r['final_max'])} "
            f"| {f(r['first_partial_p50'])} / {f(r['first_partial_p95'])} "
            f"| {f(r['partial_gap_p50'])} / {f(r['partial_gap_p90'])} | {f(r['wer'], '.1%')} | {off} "
            f"| {r['split_utterances']} / {r['missing_finals']} | {f(r['cpu_cores'])} | {f(r['cpu_s_per_audio_s'], '.3f')} "
            f"| {f(r['foreign_cores_mean'])} / {f(r['foreign_cores_peak'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, default=CORPUS, help="evaluation corpus folder (manifest.jsonl)"
    )
    parser.add_argument("--model", default="tiny.en", help="LOCAL_MODEL")
    parser.add_argument(
        "--calls",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 4, 6, 8],
        help="concurrency sweep: numbers of two-track calls (comma-separated)",
    )
    parser.add_argument("--single-seconds", type=float, default=100.0, help="speech in the one-call row")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="length of each sweep call")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between call starts")
    parser.add_argument(
        "--no-numbers", dest="numbers", action="store_false", help="skip the fsdd_sequences row"
    )
    parser.add_argument("--energy-dbfs", type=float, default=-45.0, help="level that counts as speech energy")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    result["command"] = " ".join(sys.argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    table = markdown(result)
    (args.out / f"engine-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"engine-{stamp}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
