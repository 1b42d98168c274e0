"""Observability building blocks: Prometheus metrics (one and several processes), event-loop lag,
structured logs with the call bound, OpenTelemetry spans."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from callscribe.logs import TAKEN_OVER, setup_logging
from callscribe.observability import metrics
from callscribe.observability.context import bind_call, current_call
from callscribe.observability.looplag import LoopLagMonitor
from callscribe.observability.tracing import (
    call_span,
    child_span,
    flush_tracing,
    setup_tracing,
    shutdown_tracing,
    tracer,
    tracing_enabled,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

FAMILIES = {  # name as the parser reports it (counters without _total) → type
    "callscribe_active_calls": "gauge",
    "callscribe_calls": "counter",
    "callscribe_calls_refused": "counter",
    "callscribe_frames_received": "counter",
    "callscribe_frames_forwarded": "counter",
    "callscribe_frames_dropped": "counter",
    "callscribe_bytes_received": "counter",
    "callscribe_bytes_forwarded": "counter",
    "callscribe_malformed_messages": "counter",
    "callscribe_gaps_filled": "counter",
    "callscribe_engine_reconnects": "counter",
    "callscribe_final_latency_seconds": "histogram",
    "callscribe_first_partial_latency_seconds": "histogram",
    "callscribe_sink_errors": "counter",
    "callscribe_sink_retries": "counter",
    "callscribe_event_loop_lag_seconds": "histogram",
    "callscribe_signature_rejections": "counter",
    "callscribe_auth_failures": "counter",
    "callscribe_redactions": "counter",
    "callscribe_triggers_fired": "counter",
    "callscribe_draining": "gauge",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


# --- metrics ----------------------------------------------------------------------------------


def test_render_metrics_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.ENV, raising=False)
    before = value(metrics.render_metrics()[0].decode(), "callscribe_frames_received_total") or 0.0
    metrics.FRAMES_RECEIVED.inc(5)
    metrics.CALLS.labels(outcome="completed").inc()
    metrics.CALLS_REFUSED.labels(reason="capacity").inc()
    metrics.FINAL_LATENCY.observe(0.3)
    metrics.ACTIVE_CALLS.inc()
    metrics.ACTIVE_CALLS.dec()

    body, content_type = metrics.render_metrics()
    assert content_type.startswith("text/plain")
    text = body.decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    assert "process_cpu_seconds" in types or sys.platform != "linux"  # default registry: process figures
    assert value(text, "callscribe_frames_received_total") == before + 5
    assert (value(text, "callscribe_calls_total", outcome="completed") or 0) >= 1
    assert (value(text, "callscribe_final_latency_seconds_bucket", le="0.05") or 0) >= 0
    assert value(text, "callscribe_active_calls") == 0


def test_latency_buckets() -> None:
    assert metrics.LATENCY_BUCKETS[0] == 0.05 and metrics.LATENCY_BUCKETS[-1] == 5.0
    assert metrics.LOOP_LAG_BUCKETS[0] == 0.001 and metrics.LOOP_LAG_BUCKETS[-1] == 1.0


def test_prepare_multiprocess_refuses_after_client_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(metrics.ENV, raising=False)
    import prometheus_client.values  # noqa: F401 - imported here in single-process mode

    with pytest.raises(RuntimeError, match="before anything imports prometheus_client"):
        metrics.prepare_multiprocess(tmp_path / "prom")
    assert metrics.ENV not in os.environ
    assert not (tmp_path / "prom").exists()


# Simulates gunicorn: the master prepares the directory (before prometheus_client is imported),
# defines the metrics (as with preload), forks two workers that count, and scrapes.
_GUNICORN_LIKE = textwrap.dedent(
    """
    import json, os, sys
    from callscribe.observability import metrics as m
    assert "prometheus_client" not in sys.modules, "importing metrics must not import the client"
    stale = os.path.join(sys.argv[1], "counter_1.db")
    os.makedirs(sys.argv[1], exist_ok=True)
    open(stale, "wb").close()
    m.prepare_multiprocess(sys.argv[1])
    assert not os.path.exists(stale), "files of a previous run are removed"
    assert m.is_multiprocess()
    m.ACTIVE_CALLS  # defined in the master before the fork, as gunicorn --preload would
    pids = []
    for frames, calls in ((3, 2), (4, 1)):
        pid = os.fork()
        if pid == 0:
            m.FRAMES_RECEIVED.inc(frames)
            m.ACTIVE_CALLS.inc(calls)
            m.CALLS.labels(outcome="completed").inc()
            m.FINAL_LATENCY.observe(0.2)
            if calls == 2:
                m.DRAINING.set(1)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    before = m.render_metrics()[0].decode()
    m.mark_process_dead(pids[0])  # gunicorn's child_exit hook
    after = m.render_metrics()[0].decode()
    print(json.dumps({"before": before, "after": after}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocess_gunicorn_like(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != metrics.ENV}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _GUNICORN_LIKE, str(tmp_path / "prom")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]

    assert value(before, "callscribe_frames_received_total") == 7  # 3 + 4
    assert value(before, "callscribe_active_calls") == 3  # livesum: 2 + 1
    assert value(before, "callscribe_draining") == 1  # max over workers
    assert value(before, "callscribe_calls_total", outcome="completed") == 2
    assert value(before, "callscribe_final_latency_seconds_count") == 2
    assert value(before, "callscribe_final_latency_seconds_bucket", le="0.2") == 2
    assert not any("pid" in dict(labels) for _, labels in samples(before))  # no per-worker series

    assert value(after, "callscribe_frames_received_total") == 7  # counters survive their worker
    assert value(after, "callscribe_active_calls") == 1  # the dead worker's calls are gone
    assert (value(after, "callscribe_draining") or 0) == 0


_SPAWNED_WORKER = textwrap.dedent(
    """
    import sys
    from callscribe.observability import metrics as m
    m.FRAMES_RECEIVED.inc(int(sys.argv[1]))
    m.ACTIVE_CALLS.inc()
    print("ready", flush=True)
    sys.stdin.read()  # alive until the test has scraped
    """
)


def test_multiprocess_independent_workers(tmp_path: Path) -> None:
    """Workers started with PROMETHEUS_MULTIPROC_DIR in their environment (uvicorn --workers)."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {
        **os.environ,
        metrics.ENV: str(directory),
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _SPAWNED_WORKER, str(n)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (10, 32)
    ]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        scrape = subprocess.run(
            [
                sys.executable,
                "-c",
                "from callscribe.observability import metrics as m; "
                "import sys; sys.stdout.write(m.render_metrics()[0].decode())",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    finally:
        for w in workers:
            w.communicate(timeout=30)
    assert value(scrape, "callscribe_frames_received_total") == 42
    assert value(scrape, "callscribe_active_calls") == 2


# --- event-loop lag ---------------------------------------------------------------------------


async def test_loop_lag_records_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    monkeypatch.delenv(metrics.ENV, raising=False)
    name = "callscribe_event_loop_lag_seconds"
    count0 = REGISTRY.get_sample_value(f"{name}_count") or 0.0
    fast0 = REGISTRY.get_sample_value(f"{name}_bucket", {"le": "0.1"}) or 0.0
    interval, block = 0.01, 0.2
    monitor = LoopLagMonitor(interval=interval)
    monitor.start()
    monitor.start()  # idempotent
    await asyncio.sleep(0.05)
    asyncio.get_running_loop().call_soon(time.sleep, block)  # something blocks the loop
    await asyncio.sleep(0.05)
    await monitor.stop()
    assert not monitor.running

    assert monitor.max >= block - interval  # the block shows, less the part that overlapped the sleep
    assert monitor.samples >= 2
    assert monitor.snapshot()["max_ms"] >= (block - interval) * 1000
    count = REGISTRY.get_sample_value(f"{name}_count") or 0.0
    fast = REGISTRY.get_sample_value(f"{name}_bucket", {"le": "0.1"}) or 0.0
    assert count - count0 == monitor.samples
    assert (count - count0) - (fast - fast0) >= 1  # at least one sample above 100 ms
    await monitor.stop()  # twice is fine


def test_loop_lag_rejects_bad_interval() -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(interval=0)


# --- logs -------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    servers = {n: logging.getLogger(n) for n in TAKEN_OVER}
    saved_servers = {n: (list(lg.handlers), lg.propagate, lg.level) for n, lg in servers.items()}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    for n, (handlers, propagate, level) in saved_servers.items():
        servers[n].handlers[:] = handlers
        servers[n].propagate = propagate
        servers[n].setLevel(level)


async def test_json_log_lines_carry_the_bound_call(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging("info", fmt="json")
    log = logging.getLogger("callscribe.test")

    async def pump() -> None:  # a task created inside the binding inherits it
        await asyncio.sleep(0)
        log.info("final %s", "hello", extra={"frames": 3, "track": "inbound"})

    async def elsewhere() -> None:  # a task created before the binding does not see it
        await asyncio.sleep(0.01)
        log.info("other call")

    other = asyncio.create_task(elsewhere())
    with bind_call("CA123", "MZ456"):
        assert current_call() == ("CA123", "MZ456")
        await asyncio.create_task(pump())
        try:
            raise ValueError("boom https://x/live?token=s3cr3t-value")
        except ValueError:
            log.exception("engine failed")
        log.warning("GET /live?token=abcdefsecret&x=1")
    await other
    assert current_call() == (None, None)
    log.info("after", extra={"call_sid": "CAexplicit"})

    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    by_msg = {line["msg"]: line for line in lines}
    final = by_msg["final hello"]
    assert final["call_sid"] == "CA123" and final["stream_sid"] == "MZ456"
    assert final["level"] == "INFO" and final["logger"] == "callscribe.test"
    assert final["frames"] == 3 and final["track"] == "inbound"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", final["ts"])
    assert "call_sid" not in by_msg["other call"]
    failed = by_msg["engine failed"]
    assert failed["level"] == "ERROR" and failed["call_sid"] == "CA123"
    assert "ValueError: boom" in failed["exc_info"] and "Traceback" in failed["exc_info"]
    assert "s3cr3t" not in failed["exc_info"]
    assert "GET /live?token=***&x=1" in by_msg
    assert by_msg["after"]["call_sid"] == "CAexplicit" and "stream_sid" not in by_msg["after"]


def test_text_logs_show_the_call(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    setup_logging("info")  # the old signature: text
    log = logging.getLogger("callscribe.test")
    with bind_call("CA999"):
        log.info("started")
    log.info("idle")
    log.debug("hidden")
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)  # an in-process uvicorn of another test may have raised it
    access.info('1.2.3.4 - "GET /events?token=abc HTTP/1.1" 200')
    err = capsys.readouterr().err
    assert re.search(r"INFO +callscribe\.test: \[CA999\] started", err)
    assert re.search(r"callscribe\.test: idle", err) and "[CA999] idle" not in err
    assert "hidden" not in err
    assert "token=***" in err and "token=abc" not in err  # server loggers go through our handler


def test_setup_logging_replaces_its_handler(restore_logging: None) -> None:
    first = setup_logging("warning", "json")
    second = setup_logging("info", "json")
    root = logging.getLogger()
    assert first not in root.handlers and root.handlers == [second]
    assert root.level == logging.INFO
    with pytest.raises(ValueError):
        setup_logging("info", "xml")  # type: ignore[arg-type]


# --- traces -----------------------------------------------------------------------------------


@pytest.fixture
def memory_exporter() -> Iterator[object]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert setup_tracing("callscribe-test", True, exporter=exporter) is True
    yield exporter
    shutdown_tracing()


async def test_call_span_with_engine_and_delivery_children(memory_exporter: object) -> None:
    from opentelemetry.trace import StatusCode

    call = call_span("CA1", "MZ1", tracks="inbound+outbound", engine=None)
    assert call.recording
    engine = call.start_child("engine.session", engine="local")

    async def deliver() -> None:  # a delivery in another task, parented explicitly
        # nested: inside the delivery the current span is the delivery
        with child_span("sink.deliver", call, sink="webhook", attempt=1), child_span("http.post"):
            await asyncio.sleep(0)

    await asyncio.create_task(deliver())
    with pytest.raises(RuntimeError), child_span("sink.deliver", call, sink="store"):
        raise RuntimeError("db down")
    with call.activate(), child_span("call.note"):  # current for a block: parentless spans hang from it
        pass
    engine.end(reconnects=0)
    call.end(outcome="completed", frames=500)
    call.end()  # once only
    assert flush_tracing()

    spans = memory_exporter.get_finished_spans()  # type: ignore[attr-defined]
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["callscribe.call"]
    assert root.parent is None
    assert root.attributes["callscribe.call_sid"] == "CA1"
    assert root.attributes["callscribe.stream_sid"] == "MZ1"
    assert root.attributes["outcome"] == "completed" and root.attributes["frames"] == 500
    assert "engine" not in root.attributes  # None attributes are dropped
    assert root.resource.attributes["service.name"] == "callscribe-test"
    trace_id, root_id = root.context.trace_id, root.context.span_id

    (session,) = by_name["engine.session"]
    assert session.parent.span_id == root_id and session.context.trace_id == trace_id
    assert session.attributes["engine"] == "local"
    deliveries = by_name["sink.deliver"]
    assert len(deliveries) == 2
    assert all(d.parent.span_id == root_id and d.context.trace_id == trace_id for d in deliveries)
    failed = next(d for d in deliveries if d.attributes["sink"] == "store")
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    (post,) = by_name["http.post"]
    webhook = next(d for d in deliveries if d.attributes["sink"] == "webhook")
    assert post.parent.span_id == webhook.context.span_id
    (note,) = by_name["call.note"]
    assert note.parent.span_id == root_id


def test_tracing_disabled_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import INVALID_SPAN, NoOpTracer

    exporter = InMemorySpanExporter()
    assert setup_tracing("callscribe-test", False, exporter=exporter) is False
    assert not tracing_enabled() and isinstance(tracer(), NoOpTracer)
    call = call_span("CA1", "MZ1")
    assert not call.recording and call.context is None
    child = call.start_child("engine.session")
    with child_span("sink.deliver", call, sink="webhook") as span, call.activate():
        assert span is INVALID_SPAN
    child.end(error=RuntimeError("x"))
    call.end(outcome="completed")
    assert flush_tracing()
    assert exporter.get_finished_spans() == ()

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert setup_tracing("callscribe-test", None) is False


def test_tracing_on_when_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    try:
        assert setup_tracing("callscribe-test", None) is True
        assert tracing_enabled()
    finally:
        shutdown_tracing()  # nothing recorded: nothing sent
    assert not tracing_enabled()


def test_json_logs_carry_the_current_trace(
    memory_exporter: object, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging("info", fmt="json")
    log = logging.getLogger("callscribe.test")
    call = call_span("CA7", "MZ7")
    with call.activate():
        log.info("inside")
    log.info("outside")
    call.end()
    lines = {line["msg"]: line for line in map(orjson.loads, capsys.readouterr().err.splitlines())}
    context = call.span.get_span_context()
    assert lines["inside"]["trace_id"] == f"{context.trace_id:032x}"
    assert lines["inside"]["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in lines["outside"]
