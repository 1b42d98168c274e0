"""Webhooks: signing, bodies, backoff; the outbox and worker against SQLite and PostgreSQL with a
real HTTP receiver that fails, a restart in the middle, dead letters and the delivery API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from callscribe.config import Settings, load_settings
from callscribe.events import CallEnded, CallError, CallInfo, CallStarted, Event, Track, TranscriptEvent
from callscribe.events import with_event_id as stamp
from callscribe.server.api_webhooks import router
from callscribe.server.auth import install_auth
from callscribe.storage import Store
from callscribe.webhooks import WebhookWorker, sign, verify
from callscribe.webhooks.outbox import Outbox, build_body, webhook_type, with_transcript
from callscribe.webhooks.signing import compute
from callscribe.webhooks.worker import backoff
from tests.asgi_server import serving

SECRET = "whsec_test_0123456789"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


# --- events


def started(sid: str) -> Event:
    return stamp(CallStarted(call=CallInfo(call_sid=sid, stream_sid=f"MZ{sid}"), engine="scripted"))


def final(sid: str, n: int, text: str = "", *, is_final: bool = True) -> Event:
    return stamp(
        TranscriptEvent(
            call_sid=sid,
            stream_sid=f"MZ{sid}",
            track=Track.INBOUND if n % 2 else Track.OUTBOUND,
            speaker="caller" if n % 2 else "agent",
            utterance_id=f"{sid}-u{n}",
            text=text or f"{sid} utterance {n}",
            is_final=is_final,
            start=float(n),
            end=n + 0.8,
        )
    )


def ended(sid: str) -> Event:
    return stamp(CallEnded(call_sid=sid, stream_sid=f"MZ{sid}", reason="stop", duration=10.0))


@dataclass(frozen=True)
class Trigger:
    """Stands in for the trigger events of a later issue: a dataclass with type "trigger"."""

    call_sid: str
    name: str
    at: float = 1_718_000_000.0
    event_id: str = "00000000000000000042"
    type: str = "trigger"


# --- pure parts


def test_sign_and_verify() -> None:
    body = '{"id":"1","type":"call.started"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert verify(SECRET, header, body.encode(), now=1_700_000_100)  # bytes or str alike
    assert not verify(SECRET, header, body + " ", now=1_700_000_100)  # tampered body
    assert not verify("other-secret", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_000_301)  # replayed after the tolerance
    assert verify(SECRET, header, body, tolerance=600, now=1_700_000_301)
    for bad in (None, "", "v1=abc", "t=1700000000", "t=x,v1=" + "0" * 64, "garbage"):
        assert not verify(SECRET, bad, body, now=1_700_000_000)
    # several v1 (a secret being rolled): any match counts
    rolled = (
        f"t=1700000000,v1={compute('old', 1_700_000_000, body)},v1={compute(SECRET, 1_700_000_000, body)}"
    )
    assert verify(SECRET, rolled, body, now=1_700_000_000)


def test_the_documented_receiver_snippet_verifies_our_signatures() -> None:
    """The standalone snippet in docs/webhooks.md must agree with ``sign``."""
    code = re.search(r"```python\n(import hashlib.*?)```", DOCS.read_text(), re.S)
    assert code, "docs/webhooks.md lost its verify snippet"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    body = b'{"id":"7","type":"call.ended"}'
    assert namespace["verify"](SECRET, sign(SECRET, body), body)
    assert not namespace["verify"](SECRET, sign(SECRET, body, timestamp=1_000), body)  # too old
    assert not namespace["verify"]("nope", sign(SECRET, body), body)


def test_backoff_is_full_jitter_capped_exponential() -> None:
    assert backoff(1, 5, 3600, rng=lambda: 0.999999) == pytest.approx(10, rel=1e-4)
    assert backoff(3, 5, 3600, rng=lambda: 0.5) == pytest.approx(20)
    assert backoff(30, 5, 3600, rng=lambda: 1.0) == 3600  # capped
    assert backoff(10_000, 5, 3600, rng=lambda: 1.0) == 3600  # no overflow
    assert backoff(4, 5, 3600, rng=lambda: 0.0) == 0
    draws = [backoff(4, 1, 3600) for _ in range(200)]
    assert all(0 <= d < 16 for d in draws) and len(set(draws)) > 100


def test_types_and_bodies() -> None:
    ev = final("CA1", 1, "hello there")
    assert webhook_type(ev) == "transcript.final"
    assert webhook_type(final("CA1", 2, is_final=False)) == "transcript.partial"
    assert webhook_type(started("CA1")) == "call.started"
    assert webhook_type(ended("CA1")) == "call.ended"
    assert webhook_type(Trigger("CA1", "cancel")) == "trigger.fired"  # type: ignore[arg-type]
    body = build_body(ev)
    assert body["id"] == ev.event_id and body["type"] == "transcript.final" and body["call_sid"] == "CA1"
    assert body["data"]["text"] == "hello there" and body["data"]["track"] == "inbound"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["created_at"])
    trig = build_body(Trigger("CA1", "cancel"))  # type: ignore[arg-type]
    assert trig["data"]["name"] == "cancel" and trig["created_at"].startswith("2024-06-10T")
    end = orjson.loads(with_transcript(orjson.dumps(build_body(ended("CA1"))).decode(), [{"text": "hi"}]))
    assert end["transcript"] == [{"text": "hi"}] and end["data"]["reason"] == "stop"


def test_outbox_rows_one_per_endpoint_and_selected_event() -> None:
    outbox = Outbox(["http://a/h", "http://b/h", "http://a/h"], Settings().webhook_events)
    events = [
        started("CA1"),
        final("CA1", 1),
        final("CA1", 2, is_final=False),
        stamp(CallError("CA1", "MZ", "engine", "boom")),
    ]
    rows = outbox.rows(events)
    assert [(r["endpoint"], r["event_type"]) for r in rows] == [
        ("http://a/h", "call.started"),
        ("http://b/h", "call.started"),
        ("http://a/h", "transcript.final"),
        ("http://b/h", "transcript.final"),
    ]
    with_partials = Outbox(["http://a/h"], ["transcript.partial"])
    assert [r["event_type"] for r in with_partials.rows(events)] == ["transcript.partial"]
    assert Outbox([], ["call.started"]).rows(events) == []


# --- a receiver that fails on purpose


@dataclass
class Receiver:
    """An HTTP endpoint recording every request; ``plan[event id]`` lists what the first attempts of
    that event get: a status code, or "timeout" (answers after the sender gave up)."""

    hang: float
    plan: dict[str, list[int | str]] = field(default_factory=dict)
    always: int | None = None  # answer every request with this status
    failing_paths: set[str] = field(default_factory=set)  # answer 500 on these paths
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # answered 2xx: processed

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = orjson.loads(raw)
        req = {"raw": raw, "headers": headers, "body": body, "path": scope["path"]}
        self.requests.append(req)
        todo = self.plan.get(body["id"], [])
        outcome = todo.pop(0) if todo else (self.always or 200)
        if scope["path"] in self.failing_paths:
            outcome = 500
        if outcome == "timeout":
            await asyncio.sleep(self.hang)
            outcome = 503
        assert isinstance(outcome, int)
        if 200 <= outcome < 300:
            self.accepted.append(req)
        await send({"type": "http.response.start", "status": outcome, "headers": []})
        await send({"type": "http.response.body", "body": b"ok" if outcome < 300 else b"nope"})

    def accepted_ids(self, call_sid: str | None = None) -> list[str]:
        return [r["body"]["id"] for r in self.accepted if call_sid in (None, r["body"]["call_sid"])]


# --- running (databases: the ``db_url`` and ``store`` fixtures of conftest.py, SQLite and PostgreSQL)


FAST = {"backoff_base": 0.05, "backoff_cap": 0.2, "timeout": 0.5, "poll_interval": 0.05}


async def running(url: str, settings: Settings, **kw: Any) -> tuple[Store, WebhookWorker]:
    """A new store and worker on the database at ``url`` (a process starting)."""
    store = Store.from_url(url, batch_delay=0.01)
    await store.start()
    return store, await started_worker(store, settings, **kw)


async def started_worker(store: Store, settings: Settings, **kw: Any) -> WebhookWorker:
    worker = WebhookWorker(store, settings, **(FAST | kw))
    await worker.start()
    return worker


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - state that the receiver and worker tasks change
            await asyncio.sleep(0.02)


async def deliveries(store: Store, **params: Any) -> dict[str, Any]:
    async with api_client(store) as api:
        r = await api.get("/api/webhooks/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def until_listed(
    store: Store, check: Callable[[dict[str, Any]], bool], **params: Any
) -> dict[str, Any]:
    """The first listing of ``/api/webhooks/deliveries?params`` that passes ``check``."""
    async with asyncio.timeout(20):
        while not check(listing := await deliveries(store, **params)):  # noqa: ASYNC110 - polls the DB
            await asyncio.sleep(0.05)
    return listing


def api_client(store: Store) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.gateway = SimpleNamespace(store=store)
    install_auth(app, load_settings(None))  # no keys configured: auth off, the admin route is open
    app.include_router(router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


# --- end to end


async def test_in_order_exactly_once_across_failures_and_a_restart(db_url: str) -> None:
    receiver = Receiver(hang=1.0)
    async with serving(receiver) as hostport:
        settings = load_settings(
            None, webhook_urls=[f"http://{hostport}/hook"], webhook_secret=SECRET, webhook_max_attempts=8
        )
        a1 = [started("CAa"), final("CAa", 1), final("CAa", 2), final("CAa", 3, is_final=False)]
        b1 = [started("CAb"), final("CAb", 1)]
        receiver.plan[a1[1].event_id] = [500, 500, "timeout"]  # holds call A back, not call B

        store, worker = await running(db_url, settings)
        for ev in (a1[0], b1[0], a1[1], b1[1], a1[2], a1[3]):  # a1[3]: a partial, not sent
            store.submit(ev)
        await store.flush()
        # B is delivered while A's first final keeps failing; A's second final waits behind it
        await until(lambda: len(receiver.accepted_ids("CAb")) == 2 and len(receiver.requests) >= 5)
        assert receiver.accepted_ids("CAa") == [a1[0].event_id]
        assert a1[2].event_id not in [r["body"]["id"] for r in receiver.requests]
        await worker.close()  # a restart in the middle: A is still retrying (or timing out)
        await store.close()

        store, worker = await running(db_url, settings)
        a2, b2 = [final("CAa", 4), ended("CAa")], [final("CAb", 2), ended("CAb")]
        for ev in (*b2, *a2):
            store.submit(ev)
        await store.flush()
        expect_a = [e.event_id for e in (*a1[:3], *a2)]
        expect_b = [e.event_id for e in (*b1, *b2)]
        await until(lambda: len(receiver.accepted) == len(expect_a) + len(expect_b))
        await asyncio.sleep(0.3)  # nothing more comes
        await worker.close()  # waits for the last outcomes to be recorded
        listing = await deliveries(store, call_sid="CAa")
        await store.close()

    assert receiver.accepted_ids("CAa") == expect_a  # exactly once, in order
    assert receiver.accepted_ids("CAb") == expect_b
    failing = [r for r in receiver.requests if r["body"]["id"] == a1[1].event_id]
    assert len(failing) == 4  # 500, 500, timeout, then 200: re-sent only after a failure
    assert [r["headers"]["callscribe-attempt"] for r in failing] == ["1", "2", "3", "4"]
    assert len({r["raw"] for r in failing}) == 1  # every retry sends the same bytes
    for r in receiver.requests:
        assert verify(SECRET, r["headers"]["callscribe-signature"], r["raw"])
        assert r["headers"]["content-type"] == "application/json"
        assert r["headers"]["callscribe-event"] == r["body"]["type"]
        assert r["path"] == "/hook"
    assert len({r["headers"]["callscribe-delivery"] for r in receiver.accepted}) == len(receiver.accepted)
    types = [r["body"]["type"] for r in receiver.accepted if r["body"]["call_sid"] == "CAa"]
    assert types == ["call.started", *["transcript.final"] * 3, "call.ended"]
    # call.ended carries the whole stored transcript, including finals from before the restart
    end_a = next(r["body"] for r in receiver.accepted if r["body"]["id"] == a2[1].event_id)
    assert [u["text"] for u in end_a["transcript"]] == [
        "CAa utterance 1",
        "CAa utterance 2",
        "CAa utterance 4",
    ]
    assert end_a["data"]["reason"] == "stop" and end_a["call_sid"] == "CAa"

    # the delivery log: A's first final shows its three failures and the success
    assert listing["total"] == 5 and {d["status"] for d in listing["items"]} == {"delivered"}
    row = next(d for d in listing["items"] if d["event_id"] == a1[1].event_id)
    assert row["attempts"] == 4 and row["delivered_at"] and row["next_attempt_at"] is None
    assert [(x["attempt"], x["status_code"]) for x in row["log"]] == [(1, 500), (2, 500), (3, None), (4, 200)]
    assert "timeout" in row["log"][2]["error"] and row["log"][3]["error"] is None


async def test_dead_letters_do_not_block_their_call_and_can_be_retried(store: Store) -> None:
    receiver = Receiver(hang=1.0, always=500)
    async with serving(receiver) as hostport:
        settings = load_settings(
            None, webhook_urls=[f"http://{hostport}/crm"], webhook_secret=SECRET, webhook_max_attempts=3
        )
        worker = await started_worker(store, settings)
        api = api_client(store)
        try:
            events = [started("CAd"), final("CAd", 1), ended("CAd")]
            for ev in events:
                store.submit(ev)
            await store.flush()
            # each dies after 3 attempts, then the next event of the call is tried (dead unblocks)
            dead = await until_listed(store, lambda d: d["total"] == 3, status="dead")
            assert len(receiver.requests) == 9
            assert [d["event_id"] for d in reversed(dead["items"])] == [e.event_id for e in events]
            first = dead["items"][-1]
            assert first["attempts"] == 3 and first["last_error"].startswith("HTTP 500")
            assert [x["status_code"] for x in first["log"]] == [500, 500, 500]
            sent = [r["body"]["id"] for r in receiver.requests]
            assert sent == [e.event_id for e in events for _ in range(3)]  # in order, per call

            page = (await api.get("/api/webhooks/deliveries", params={"limit": 1, "offset": 1})).json()
            assert page["total"] == 3 and [d["id"] for d in page["items"]] == [dead["items"][1]["id"]]
            assert (await api.get("/api/webhooks/deliveries", params={"status": "nope"})).status_code == 422

            receiver.always = None  # the CRM is back: re-queue the call.started
            r = await api.post(f"/api/webhooks/deliveries/{first['id']}/retry")
            assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0
            listing = await until_listed(
                store, lambda d: d["items"][-1]["status"] == "delivered", call_sid="CAd"
            )
            assert receiver.accepted_ids() == [events[0].event_id]
            statuses = {d["event_id"]: d["status"] for d in listing["items"]}
            assert statuses == {events[0].event_id: "delivered", **{e.event_id: "dead" for e in events[1:]}}
            again = next(d for d in listing["items"] if d["id"] == first["id"])
            assert [x["attempt"] for x in again["log"]] == [1, 2, 3, 1]  # the log is kept

            assert (await api.post(f"/api/webhooks/deliveries/{first['id']}/retry")).status_code == 409
            assert (await api.post("/api/webhooks/deliveries/999999/retry")).status_code == 404
        finally:
            await api.aclose()
            await worker.close()


async def test_a_crashed_workers_lease_expires_and_the_row_is_retried(store: Store) -> None:
    """A worker that dies mid-request (no close) leaves a leased row: another worker sends it once
    the lease runs out."""
    receiver = Receiver(hang=1.0)
    async with serving(receiver) as hostport:
        settings = load_settings(None, webhook_urls=[f"http://{hostport}/h"], webhook_secret=SECRET)
        worker = await started_worker(store, settings, lease=0.5)
        blocker = asyncio.Event()

        async def never_answers(*_: Any, **__: Any) -> Any:
            await blocker.wait()

        worker._client.post = never_answers  # type: ignore[union-attr,method-assign]
        ev = started("CAc")
        store.submit(ev)
        await store.flush()
        await until(lambda: bool(worker._inflight))  # the request is "on the wire"
        worker._task.cancel()  # type: ignore[union-attr]  # the process dies: no close, no release
        for t in list(worker._inflight):
            t.cancel()

        other = await started_worker(store, settings, lease=0.5)
        try:
            await until(lambda: len(receiver.accepted) == 1, timeout=10)
            assert receiver.accepted_ids() == [ev.event_id]
        finally:
            await other.close()
            await worker._client.aclose()  # type: ignore[union-attr]


async def test_a_failing_endpoint_does_not_hold_back_another(store: Store) -> None:
    """Ordering is per (endpoint, call). With a 30 s poll, the fast path is what delivers: new rows
    wake the worker when their transaction commits, and each delivery wakes it for the next."""
    receiver = Receiver(hang=1.0, failing_paths={"/down"})
    async with serving(receiver) as hostport:
        up, down = f"http://{hostport}/up", f"http://{hostport}/down"
        settings = load_settings(None, webhook_urls=[down, up], webhook_secret=SECRET)
        worker = await started_worker(store, settings, poll_interval=30, backoff_base=60)
        try:
            events = [started("CAe"), final("CAe", 1), final("CAe", 2), ended("CAe")]
            await asyncio.sleep(0.1)  # the worker is idle, waiting for its next poll
            for ev in events:
                store.submit(ev)
            await until(lambda: len(receiver.accepted) == 4, timeout=5)
            assert receiver.accepted_ids() == [e.event_id for e in events]
            assert {r["path"] for r in receiver.accepted} == {"/up"}
            tried_down = [r["body"]["id"] for r in receiver.requests if r["path"] == "/down"]
            assert set(tried_down) == {events[0].event_id}  # stuck on its first event, backing off
        finally:
            await worker.close()


async def test_close_hands_back_the_rows_it_could_not_finish(store: Store) -> None:
    receiver = Receiver(hang=1.0)
    async with serving(receiver) as hostport:
        settings = load_settings(None, webhook_urls=[f"http://{hostport}/h"], webhook_secret=SECRET)
        # a long lease: only the hand-back can make the row due again within this test
        worker = await started_worker(store, settings, lease=600, close_timeout=0.2)
        stuck = asyncio.Event()

        async def never_answers(*_: Any, **__: Any) -> Any:
            await stuck.wait()

        worker._client.post = never_answers  # type: ignore[union-attr,method-assign]
        ev = started("CAf")
        store.submit(ev)
        await store.flush()
        await until(lambda: bool(worker._inflight), timeout=5)
        await worker.close()

        again = await started_worker(store, settings)
        try:
            await until(lambda: len(receiver.accepted) == 1, timeout=5)
            assert receiver.accepted_ids() == [ev.event_id]
            await again.close()  # waits for the outcome to be recorded
            (row,) = (await deliveries(store))["items"]
            assert row["status"] == "delivered" and row["attempts"] == 1  # the cut-off one did not count
        finally:
            await again.close()
