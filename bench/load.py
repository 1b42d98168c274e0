"""Gateway relay load benchmark: N concurrent simulated Twilio calls → a gateway → the fake Gladia server.

Subcommands (``--help`` on each):

- ``ramp``: for each system (``callscribe``, the ``floor`` relay, the ``blog`` baseline), one after
  the other in this run, ramp N concurrent calls in steps; stop a system at the first step whose
  proxy-added p99 exceeds ``--p99-bound-ms`` or that loses a frame. Table, JSON, PNG.
- ``chunks``: callscribe at one N with each ``GLADIA_CHUNK_MS`` (20/40/100): the cost of coalescing in
  latency (per frame and newest frame per chunk) against its saving in CPU.
- ``soak``: N calls for ``--minutes``; memory, CPU and latency sampled every minute.

Every frame's μ-law payload carries a marker (call, track, frame number); the callers log when each
frame left, the fake engine logs when each marker arrived (``FakeGladia(record_markers=True)``), and
``loadgen.accounting`` turns both into latency, loss, duplicates and reordering. The gateway under
test is a real process (``callscribe serve``); its CPU and RSS come from psutil, the event-loop lag
from a ``GET /healthz`` probe every 100 ms. Callers run in ``--workers`` processes on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from loadgen.accounting import SENT_DTYPE, account, parse_marker_dump, percentiles  # noqa: E402
from loadgen.caller import CallSpec, worker_main  # noqa: E402

PY = sys.executable
RESULTS = BENCH / "results"
SYSTEMS = ("callscribe", "callscribe-nodeflate", "floor", "blog")


# ------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    port: int
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)

    def tree(self) -> list[psutil.Process]:
        try:
            p = self.ps
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree():
            with suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            with suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, argv: list[str], port: int, logdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = logdir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(
        argv,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=logdir,
        start_new_session=True,
    )
    proc = Proc(name, popen, port, log)
    try:
        wait_port(port, popen)
    except Exception:
        proc.stop()
        raise RuntimeError(f"{name} did not start; see {log}:\n{log.read_text()[-2000:]}") from None
    return proc


def start_fake(logdir: Path) -> Proc:
    port = free_port()
    return spawn(
        "fake-gladia", [PY, str(Path(__file__).resolve()), "_fake", "--port", str(port)], port, logdir
    )


def start_system(system: str, fake: Proc, logdir: Path, chunk_ms: int, extra_env: dict[str, str]) -> Proc:
    port = free_port()
    fake_url = f"http://127.0.0.1:{fake.port}"
    common = {"GLADIA_API_URL": fake_url, "GLADIA_API_KEY": "fake-gladia-key"}
    if system.startswith("callscribe"):
        if system == "callscribe-nodeflate":  # the suggested engines/gladia.py change, A/B (patches/)
            extra_env = {
                **extra_env,
                "CALLSCRIBE_BENCH_NO_DEFLATE": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(BENCH / "loadgen" / "patches"), os.environ.get("PYTHONPATH")])
                ),
            }
        env = {
            **common,
            "ENGINE": "gladia",
            "SINKS": "[]",
            "DATABASE_URL": f"sqlite+aiosqlite:///{logdir}/callscribe-bench.db",
            "GLADIA_CHUNK_MS": str(chunk_ms),
            "MAX_CALLS": "5000",
            "WORKERS": "1",
            **extra_env,
        }
        exe = str(Path(PY).with_name("callscribe"))
        return spawn(system, [exe, "serve", "--port", str(port)], port, logdir, env)
    if system == "floor":
        argv = [
            PY,
            str(BENCH / "baselines" / "floor_relay.py"),
            "--port",
            str(port),
            "--gladia-url",
            fake_url,
        ]
        return spawn(system, argv, port, logdir, common)
    if system == "blog":
        return spawn(
            system,
            [PY, str(BENCH / "baselines" / "blog_proxy.py")],
            port,
            logdir,
            {**common, "HTTP_PORT": str(port)},
        )
    raise ValueError(system)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# ------------------------------------------------------------------------------------------ one step


class Sampler:
    """CPU seconds of a set of processes and of the whole machine between two points."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs

    def snap(self, workers: list[psutil.Process]) -> dict[str, float]:
        out = {name: p.cpu() for name, p in self.procs.items()}
        w = 0.0
        for p in workers:
            with suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                w += t.user + t.system
        out["loadgen"] = w
        me = psutil.Process().cpu_times()
        out["parent"] = me.user + me.system
        m = psutil.cpu_times()
        out["machine"] = m.user + m.system + m.nice + getattr(m, "irq", 0) + getattr(m, "softirq", 0)
        out["t"] = time.monotonic()
        return out


def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    dt = b["t"] - a["t"]
    out = {k: (b[k] - a[k]) / dt for k in a if k != "t"}
    ours = sum(v for k, v in out.items() if k != "machine")
    out["foreign"] = max(0.0, out["machine"] - ours)
    return out


async def probe(url: str, stop: asyncio.Event, every: float = 0.1) -> list[float]:
    """RTT of GET /healthz, every ``every`` s: the gateway's event-loop lag plus a tiny request."""
    rtts: list[float] = []
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            t = time.monotonic()
            try:
                await client.get(url)
                rtts.append(time.monotonic() - t)
            except httpx.HTTPError:
                rtts.append(5.0)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - t)))
    return rtts


def spawn_workers(
    sut: Proc, specs: list[CallSpec], nworkers: int, flush_every: float
) -> tuple[list[Any], list[Any], list[psutil.Process]]:
    ctx = mp.get_context("spawn")
    parts: list[list[CallSpec]] = [specs[i::nworkers] for i in range(nworkers)]
    procs, conns = [], []
    for part in parts:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker_main, args=(child, "127.0.0.1", sut.port, "/media", part, flush_every))
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    return procs, conns, [psutil.Process(p.pid) for p in procs]


def logs_to_sent(chunks: list[dict[str, bytes]]) -> np.ndarray:
    n = sum(len(c["t"]) // 8 for c in chunks)
    sent = np.empty(n, SENT_DTYPE)
    i = 0
    for c in chunks:
        k = len(c["t"]) // 8
        sent["call"][i : i + k] = np.frombuffer(c["call"], "<u2")
        sent["track"][i : i + k] = np.frombuffer(c["track"], "u1")
        sent["seq"][i : i + k] = np.frombuffer(c["seq"], "<u4")
        sent["t"][i : i + k] = np.frombuffer(c["t"], "<f8")
        i += k
    return sent


class WorkerReader:
    """Collects the worker processes' messages (send logs, final stats) from threads."""

    def __init__(self, conns: list[Any]) -> None:
        self.logs: list[dict[str, bytes]] = []
        self.late: list[np.ndarray] = []
        self.done: list[dict[str, Any]] = []
        self.conns = conns

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, self._read, c) for c in self.conns))

    def _read(self, conn: Any) -> None:
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:
                return
            if kind == "log":
                self.late.append(np.frombuffer(payload.pop("late"), "<f8"))
                self.logs.append(payload)
            else:
                self.done.append(payload)
                return

    def take_sent(self) -> np.ndarray:
        logs, self.logs = self.logs, []
        return logs_to_sent(logs)


async def fetch_markers(fake: Proc, chunk_base: int) -> np.ndarray:
    async with httpx.AsyncClient(timeout=60) as client:
        resp = await client.get(f"http://127.0.0.1:{fake.port}/fake/markers")
        resp.raise_for_status()
        return parse_marker_dump(resp.content, chunk_base)


@dataclass
class StepConfig:
    calls: int
    tracks: int
    duration: float
    ramp: float
    workers: int
    call_base: int = 0


@dataclass
class Run:
    fake: Proc
    sut: Proc
    system: str
    chunk_ms: int
    chunk_base: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


async def run_step(run: Run, cfg: StepConfig) -> dict[str, Any]:
    n = cfg.calls
    t0 = time.monotonic() + 2.0  # workers start up meanwhile
    specs = [
        CallSpec(
            call=(cfg.call_base + i) % 65536,
            tracks=cfg.tracks,
            start_at=t0 + cfg.ramp * i / n,
            duration=cfg.duration,
        )
        for i in range(n)
    ]
    window = (t0 + cfg.ramp + 1.5, t0 + cfg.duration - 1.0)
    rss_idle = run.sut.rss()
    procs, conns, wps = spawn_workers(run.sut, specs, cfg.workers, 0)
    reader = WorkerReader(conns)
    reading = asyncio.create_task(reader.run())
    sampler = Sampler({"sut": run.sut, "fake": run.fake})

    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    stop = asyncio.Event()
    probing = asyncio.create_task(probe(f"http://127.0.0.1:{run.sut.port}/healthz", stop))
    a = sampler.snap(wps)
    rss: list[int] = []
    while time.monotonic() < window[1]:
        rss.append(run.sut.rss())
        await asyncio.sleep(min(1.0, max(0.0, window[1] - time.monotonic())))
    b = sampler.snap(wps)
    stop.set()
    rtts = await probing
    await reading
    for p in procs:
        p.join(10)
    await asyncio.sleep(2.5)  # drain: the gateway flushes and stops its sessions
    recv = await fetch_markers(run.fake, run.chunk_base)
    if len(recv):
        run.chunk_base = int(recv["chunk"].max()) + 1
    sent = reader.take_sent()
    acc, _, _ = account(sent, recv, window=window)
    late = np.concatenate(reader.late) if reader.late else np.array([])
    c = cores(a, b)
    errors = [e for d in reader.done for e in d["errors"]]
    call_seconds = n * (b["t"] - a["t"])
    rss_peak = max(rss) if rss else run.sut.rss()
    row = {
        "system": run.system,
        "calls": n,
        "tracks": cfg.tracks,
        "chunk_ms": run.chunk_ms,
        "window_s": round(b["t"] - a["t"], 1),
        **acc.as_dict(),
        "call_errors": len(errors),
        "call_error_examples": errors[:5],
        "sut_cores": c["sut"],
        "sut_cpu_ms_per_call_s": 1000 * c["sut"] * (b["t"] - a["t"]) / call_seconds,
        "sut_rss_mb": rss_peak / 2**20,
        "sut_rss_idle_mb": rss_idle / 2**20,
        "sut_rss_kb_per_call": (rss_peak - rss_idle) / 1024 / n,
        "loop_lag_probe_ms": percentiles(np.array(rtts)),
        "fake_cores": c["fake"],
        "loadgen_cores": c["loadgen"],
        "loadgen_tick_late_ms": percentiles(late),
        "parent_cores": c["parent"],
        "foreign_cores": c["foreign"],
        "machine_cores": c["machine"],
    }
    return row


# ------------------------------------------------------------------------------------------ reporting


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def row_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    newest = r["latency_newest_in_chunk_ms"]
    lag = r["loop_lag_probe_ms"]
    return (
        f"| {r['system']} | {r['calls']}×{r['tracks']} | {r['chunk_ms']} | "
        f"{fmt(lat['p50'])} / {fmt(lat['p95'])} / {fmt(lat['p99'])} / {fmt(lat['max'], 0)} | {fmt(newest['p99'])} | "
        f"{r['lost']} / {r['duplicated']} / {r['reordered']} | {r['call_errors']} | "
        f"{fmt(r['sut_cores'], 2)} | {fmt(r['sut_cpu_ms_per_call_s'], 2)} | {fmt(r['sut_rss_mb'], 0)} | "
        f"{fmt(r['sut_rss_kb_per_call'], 0)} | {fmt(lag['p50'])} / {fmt(lag['p99'])} | "
        f"{fmt(r['loadgen_cores'], 2)} | {fmt(r['fake_cores'], 2)} | {fmt(r['foreign_cores'], 2)} |"
    )


TABLE_HEAD = (
    "| system | calls×tracks | chunk ms | proxy-added latency p50 / p95 / p99 / max (ms) | newest-in-chunk p99 (ms) | "
    "lost / dup / reordered | call errors | gateway cores | gateway CPU ms per call-s | RSS MB | RSS KB/call | "
    "loop-lag probe p50 / p99 (ms) | loadgen cores | fake cores | foreign cores |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["system"], r["calls"]): r for r in rows}
    keys = sorted({(r["system"], r["calls"]) for r in rows if r["system"].startswith("callscribe")})
    out = [
        "| variant | N | p99 callscribe / floor | CPU/call callscribe / floor | p99 blog / callscribe | CPU/call blog / callscribe |",
        "|---|---|---|---|---|---|",
    ]
    for variant, n in keys:
        c = by[(variant, n)]
        cells = [variant, str(n)]
        for ref, inverse in (("floor", False), ("blog", True)):
            r = by.get((ref, n))
            if r is None or r["latency_ms"]["p99"] is None or c["latency_ms"]["p99"] is None:
                cells += ["–", "–"]
                continue
            pa, pb = c["latency_ms"]["p99"], r["latency_ms"]["p99"]
            ca, cb = c["sut_cpu_ms_per_call_s"], r["sut_cpu_ms_per_call_s"]
            if inverse:
                cells += [f"{pb / pa:.1f}×", f"{cb / ca:.1f}×"]
            else:
                cells += [f"{pa / pb:.2f}", f"{ca / cb:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot_ramp(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system in SYSTEMS:
        rs = [r for r in rows if r["system"] == system and r["latency_ms"]["p99"] is not None]
        if not rs:
            continue
        ns = [r["calls"] for r in rs]
        ax1.plot(ns, [r["latency_ms"]["p99"] for r in rs], "o-", label=f"{system} p99")
        ax1.plot(ns, [r["latency_ms"]["p50"] for r in rs], "x--", alpha=0.6, label=f"{system} p50")
        ax2.plot(ns, [r["sut_cpu_ms_per_call_s"] for r in rs], "o-", label=f"{system}")
    ax1.set_yscale("log")
    ax1.set_xlabel("concurrent calls")
    ax1.set_ylabel("proxy-added latency (ms, log)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("concurrent calls")
    ax2.set_ylabel("gateway CPU ms per call-second")
    ax2.set_yscale("log")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def write_outputs(kind: str, meta: dict[str, Any], rows: list[dict[str, Any]], extra: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"load-{kind}-{stamp()}"
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    lines = [TABLE_HEAD, *(row_line(r) for r in rows), "", *extra]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {base}.json / .md")
    return base


# ------------------------------------------------------------------------------------------ commands


def collapsed(r: dict[str, Any], bound_ms: float) -> str | None:
    p99 = r["latency_ms"]["p99"]
    if r["lost"] or r["call_errors"]:
        return f"lost {r['lost']} frames, {r['call_errors']} call errors"
    if p99 is None or p99 > bound_ms:
        return f"p99 {fmt(p99)} ms > {bound_ms:g} ms"
    return None


async def cmd_ramp(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="callscribe-load-"))
    calls = [int(x) for x in args.calls.split(",")]
    systems = args.systems.split(",")
    meta = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "args": vars(args) | {"func": None},
        "logdir": str(logdir),
    }
    rows: list[dict[str, Any]] = []
    limits: dict[str, str] = {}
    call_base = 0
    for system in systems:
        fake = start_fake(logdir)
        sut = start_system(system, fake, logdir, args.chunk_ms, {})
        run = Run(fake, sut, system, args.chunk_ms if system.startswith("callscribe") else 20)
        try:
            await asyncio.sleep(1.0)
            steps = (
                [int(x) for x in args.blog_calls.split(",")]
                if system == "blog" and args.blog_calls
                else calls
            )
            for n in steps:
                cfg = StepConfig(n, args.tracks, args.duration, args.ramp, args.workers, call_base)
                call_base += n
                print(f"[{system}] {n} calls × {args.tracks} tracks …", flush=True)
                row = await run_step(run, cfg)
                rows.append(row)
                print(TABLE_HEAD.splitlines()[0] + "\n" + row_line(row), flush=True)
                why = collapsed(row, args.p99_bound_ms)
                if why:
                    limits[system] = f"stopped at N={n}: {why}"
                    print(f"[{system}] {limits[system]}", flush=True)
                    break
                await asyncio.sleep(args.pause)
            else:
                limits[system] = f"survived every step up to N={steps[-1]}"
        finally:
            sut.stop()
            fake.stop()
    meta["limits"] = limits
    extra = ["Ratios (same run):", "", *ratio_lines(rows), "", "Where each system stopped:", ""]
    extra += [f"- {s}: {why}" for s, why in limits.items()]
    base = write_outputs(f"ramp{args.tracks}", meta, rows, extra)
    plot_ramp(
        rows, base.with_suffix(".png"), f"{args.tracks}-track calls, chunk {args.chunk_ms} ms (callscribe)"
    )
    print(f"plot {base}.png")
    if not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


async def cmd_chunks(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="callscribe-load-"))
    meta = {"command": " ".join(sys.argv), "machine": machine(), "args": vars(args) | {"func": None}}
    rows = []
    call_base = 0
    for chunk in [int(x) for x in args.chunk_ms.split(",")]:
        fake = start_fake(logdir)
        sut = start_system("callscribe", fake, logdir, chunk, {})
        try:
            await asyncio.sleep(1.0)
            print(f"[callscribe chunk {chunk} ms] {args.calls} calls × {args.tracks} tracks …", flush=True)
            row = await run_step(
                Run(fake, sut, "callscribe", chunk),
                StepConfig(args.calls, args.tracks, args.duration, args.ramp, args.workers, call_base),
            )
            call_base += args.calls
            rows.append(row)
            print(row_line(row), flush=True)
        finally:
            sut.stop()
            fake.stop()
    write_outputs(f"chunks{args.tracks}", meta, rows, [])
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


async def cmd_soak(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="callscribe-load-"))
    meta = {"command": " ".join(sys.argv), "machine": machine(), "args": vars(args) | {"func": None}}
    fake = start_fake(logdir)
    sut = start_system("callscribe", fake, logdir, args.chunk_ms, {})
    minutes: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(1.0)
        n = args.calls
        duration = args.minutes * 60 + args.ramp + 2
        t0 = time.monotonic() + 2.0
        specs = [CallSpec(i, args.tracks, t0 + args.ramp * i / n, duration) for i in range(n)]
        procs, conns, wps = spawn_workers(sut, specs, args.workers, args.sample_s)
        reader = WorkerReader(conns)
        reading = asyncio.create_task(reader.run())
        sampler = Sampler({"sut": sut, "fake": fake})
        rss_idle = sut.rss()
        await asyncio.sleep(max(0.0, t0 + args.ramp + 1 - time.monotonic()))
        start = time.monotonic()
        a = sampler.snap(wps)
        pend_sent = np.empty(0, SENT_DTYPE)
        pend_recv = parse_marker_dump(b"\0\0\0\0")
        chunk_base = 0
        for minute in range(1, int(args.minutes * 60 / args.sample_s) + 1):
            stop = asyncio.Event()
            probing = asyncio.create_task(probe(f"http://127.0.0.1:{sut.port}/healthz", stop, every=0.5))
            await asyncio.sleep(max(0.0, start + minute * args.sample_s - time.monotonic()))
            stop.set()
            rtts = await probing
            b = sampler.snap(wps)
            await asyncio.sleep(0.5)  # the workers' periodic log flush
            recv = await fetch_markers(fake, chunk_base)
            if len(recv):
                chunk_base = int(recv["chunk"].max()) + 1
            sent = np.concatenate([pend_sent, reader.take_sent()])
            recv = np.concatenate([pend_recv, recv])
            cutoff = time.monotonic() - 3.0
            acc, pend_sent, pend_recv = account(
                sent, recv, cutoff=cutoff, window=(start + (minute - 1) * args.sample_s - 1, cutoff)
            )
            c = cores(a, b)
            row = {
                "minute": round((b["t"] - start) / 60, 2),
                "calls": n,
                **acc.as_dict(),
                "sut_rss_mb": sut.rss() / 2**20,
                "sut_rss_kb_per_call": (sut.rss() - rss_idle) / 1024 / n,
                "sut_cores": c["sut"],
                "sut_cpu_ms_per_call_s": 1000 * c["sut"] / n,
                "loop_lag_probe_ms": percentiles(np.array(rtts)),
                "loadgen_cores": c["loadgen"],
                "fake_cores": c["fake"],
                "foreign_cores": c["foreign"],
            }
            a = b
            minutes.append(row)
            lat = row["latency_ms"]
            print(
                f"minute {row['minute']:5.2f}: RSS {row['sut_rss_mb']:.0f} MB, p50/p99/max {fmt(lat['p50'])}/"
                f"{fmt(lat['p99'])}/{fmt(lat['max'], 0)} ms, lost {row['lost']}, dup {row['duplicated']}, "
                f"gateway {row['sut_cores']:.2f} cores, loadgen {row['loadgen_cores']:.2f}, foreign {row['foreign_cores']:.2f}",
                flush=True,
            )
        await reading
        for p in procs:
            p.join(10)
        errors = [e for d in reader.done for e in d["errors"]]
        meta["call_errors"] = errors[:20]
    finally:
        sut.stop()
        fake.stop()
    flat = summarize_soak(minutes, args.flat_from)
    meta["flat"] = flat
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"load-soak-{stamp()}"
    base.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "minutes": minutes}, indent=1, default=str)
    )
    plot_soak(minutes, base.with_suffix(".png"), n, args.flat_from)
    print(json.dumps(flat, indent=1))
    print(f"wrote {base}.json / .png")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


def summarize_soak(minutes: list[dict[str, Any]], flat_from: float) -> dict[str, Any]:
    rs = [m for m in minutes if m["minute"] >= flat_from - 0.01 and m["latency_ms"]["p99"] is not None]
    if not rs:
        return {}
    rss = np.array([m["sut_rss_mb"] for m in rs])
    p99 = np.array([m["latency_ms"]["p99"] for m in rs])
    return {
        "from_minute": flat_from,
        "rss_mb_first_last_min_max": [float(rss[0]), float(rss[-1]), float(rss.min()), float(rss.max())],
        "rss_spread_pct": float(100 * (rss.max() - rss.min()) / rss.min()),
        "rss_drift_pct": float(100 * (rss[-1] - rss[0]) / rss[0]),
        "p99_ms_first_last_min_max": [float(p99[0]), float(p99[-1]), float(p99.min()), float(p99.max())],
        "p99_spread_pct": float(100 * (p99.max() - p99.min()) / p99.min()),
        "lost": int(sum(m["lost"] for m in minutes)),
        "duplicated": int(sum(m["duplicated"] for m in minutes)),
    }


def plot_soak(minutes: list[dict[str, Any]], path: Path, n: int, flat_from: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(9, 4))
    t = [m["minute"] for m in minutes]
    ax1.plot(t, [m["sut_rss_mb"] for m in minutes], "o-", color="tab:blue", label="gateway RSS (MB)")
    ax1.set_ylabel("RSS (MB)", color="tab:blue")
    ax1.set_xlabel("minute")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(t, [m["latency_ms"]["p99"] for m in minutes], "s-", color="tab:red", label="p99 (ms)")
    ax2.plot(t, [m["latency_ms"]["p50"] for m in minutes], "x--", color="tab:orange", label="p50 (ms)")
    ax2.set_ylabel("proxy-added latency (ms)", color="tab:red")
    ax2.set_ylim(bottom=0)
    ax1.axvline(flat_from, color="grey", ls=":")
    fig.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"soak: {n} calls, per-minute RSS and latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_fake(args: argparse.Namespace) -> int:
    """Internal: the fake Gladia server with marker recording, on uvloop."""
    import uvloop

    from callscribe.fakes.gladia import FakeGladia

    async def main() -> None:
        async with FakeGladia(
            port=args.port, max_sessions=100_000, keep_audio=False, record_markers=True
        ) as fake:
            print(f"fake gladia on {fake.url}", flush=True)
            await fake.wait_closed()

    with suppress(KeyboardInterrupt):
        uvloop.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, calls: str, duration: float) -> None:
        p.add_argument("--calls", default=calls, help="concurrent calls (ramp: comma-separated steps)")
        p.add_argument("--tracks", type=int, default=2, choices=(1, 2), help="tracks per call")
        p.add_argument("--duration", type=float, default=duration, help="seconds of audio per call per step")
        p.add_argument(
            "--ramp", type=float, default=5.0, help="call starts are spread over this many seconds"
        )
        p.add_argument("--workers", type=int, default=2, help="load generator processes")

    p = sub.add_parser("ramp", help="ramp N for each system; stop at the p99 bound or the first loss")
    common(p, "50,100,150,200", 40)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--chunk-ms", type=int, default=20, help="callscribe GLADIA_CHUNK_MS (baselines: 20)")
    p.add_argument("--p99-bound-ms", type=float, default=1000.0)
    p.add_argument("--blog-calls", default="", help="steps for the blog baseline (default: --calls)")
    p.add_argument("--pause", type=float, default=3.0, help="seconds between steps")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (temp dir)")
    p.set_defaults(func=cmd_ramp)

    p = sub.add_parser("chunks", help="callscribe at one N, each GLADIA_CHUNK_MS")
    common(p, "200", 40)
    p.add_argument("--chunk-ms", default="20,40,100")
    p.set_defaults(func=cmd_chunks)

    p = sub.add_parser("soak", help="N calls for --minutes; memory and latency every --sample-s")
    common(p, "100", 0)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--sample-s", type=float, default=60.0)
    p.add_argument("--chunk-ms", type=int, default=20)
    p.add_argument("--flat-from", type=float, default=5.0, help="minute from which RSS and p99 must be flat")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("_fake", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=cmd_fake)

    args = parser.parse_args(argv)
    if args.cmd == "_fake":
        return cmd_fake(args)
    args.calls = args.calls if args.cmd == "ramp" else int(args.calls)
    return asyncio.run(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
