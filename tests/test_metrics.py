"""Prometheus metrics: counted where things happen, queue depths read at scrape time, served without a token
on /metrics, and on their own port by a process without the HTTP API.

Counters are per process (one registry), so every test compares a value before and after what it does.
Real parts throughout: intake on a real MLLP socket, the real mapper, the in-process API, a real closed
port for the database that does not answer, and prometheus_client's own server on a real port.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_graceful_stop import part, part_env, stop_and_wait, wait_for_line

from services.api.app import create_app
from services.intake.service import IntakeService
from services.mapper.service import MapperService
from shared.metrics import CONTENT_TYPE, REGISTRY, Bounded, MetricsServer, Scrape, render
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Store, connect
from shared.supervision import Backoff, Heartbeat, TaskRegistry, supervise

NHS = "9449305552"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def adt(control_id: str, sender: str = "RBL") -> bytes:
    lines = [
        f"MSH|^~\\&|PAS|{sender}|MSCC-HUB|REN|20261125080000||ADT^A01|{control_id}|P|2.5",
        "EVN|A01|20261125080000",
        f"PID|1||{NHS}^^^NHS^NH~RBL123^^^RBL^MR||DEMO^ALEX||19580214|M",
    ]
    return ("\r".join(lines) + "\r").encode()


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of every sample in a text exposition (the parser rejects a bad one)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


async def send(intake: IntakeService, *messages: bytes) -> list[bytes]:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        return [await client.send(message) for message in messages]
    finally:
        await client.close()


@pytest.fixture
async def remote(intake: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process app called from another machine: no development client, so every route but the
    public ones answers 401."""
    transport = httpx.ASGITransport(app=create_app(intake), client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        yield client


async def test_metrics_are_public_and_in_the_prometheus_text_format(remote: httpx.AsyncClient) -> None:
    assert (await remote.get("/fhir/ServiceRequest")).status_code == 401  # a token is needed elsewhere
    answer = await remote.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parsed(answer.text)
    for name in (
        "mscc_mapper_queue_depth",
        "mscc_mapper_queue_lag_seconds",
        "mscc_outbox_depth",
        "mscc_outbox_oldest_pending_seconds",
        "mscc_notifier_deliveries_pending",
        "process_cpu_seconds_total",
    ):
        assert name in samples, name
    assert samples["mscc_metrics_database_up"] == [({}, 1.0)]


async def test_mllp_messages_are_counted_by_sender_type_channel_and_status(intake: IntakeService) -> None:
    accepted = {"sender": "RBL", "type": "ADT^A01", "channel": "mllp", "status": "accepted"}
    duplicate = {**accepted, "status": "duplicate"}
    rejected = {"sender": "unknown", "type": "unknown", "channel": "mllp", "status": "rejected"}
    before = [value("mscc_messages_received_total", **labels) for labels in (accepted, duplicate, rejected)]
    acks_before = value("mscc_ack_seconds_count", channel="mllp")

    message = adt("MET-1")
    replies = await send(intake, message, message, b"EVN|A01|20261125080000\rPID|1||X\r")
    assert [b"MSA|AA|" in r for r in replies[:2]] == [True, True] and b"MSA|AR|" in replies[2]

    after = [value("mscc_messages_received_total", **labels) for labels in (accepted, duplicate, rejected)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert value("mscc_ack_seconds_count", channel="mllp") - acks_before == 3
    assert value("mscc_ack_seconds_bucket", channel="mllp", le="10.0") - acks_before == 3


async def test_hl7v2_over_http_is_counted_by_route_template_and_its_answer_timed(http: httpx.AsyncClient) -> None:
    hl7 = {"route": "/hl7v2", "method": "POST", "status": "200"}
    read = {"route": "/fhir/{resource_type}/{resource_id}", "method": "GET", "status": "404"}
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    before = [value("mscc_http_requests_total", **labels) for labels in (hl7, read, unmatched)]
    acks_before = value("mscc_ack_seconds_count", channel="http")
    received_before = value(
        "mscc_messages_received_total", sender="RBL", type="ADT^A01", channel="http", status="accepted"
    )

    answer = await http.post("/hl7v2", content=adt("MET-2"), headers={"Content-Type": "application/hl7-v2"})
    assert answer.status_code == 200 and "MSA|AA|" in answer.text
    assert (await http.get("/fhir/Patient/no-such-patient")).status_code == 404
    assert (await http.get("/no/such/path/at/all")).status_code == 404

    after = [value("mscc_http_requests_total", **labels) for labels in (hl7, read, unmatched)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert value("mscc_ack_seconds_count", channel="http") - acks_before == 1
    received = value("mscc_messages_received_total", sender="RBL", type="ADT^A01", channel="http", status="accepted")
    assert received - received_before == 1


async def test_fhir_creates_are_counted_with_the_callers_ods_code(http: httpx.AsyncClient) -> None:
    labels = {"sender": "REN", "type": "ServiceRequest", "channel": "fhir"}
    before = {s: value("mscc_messages_received_total", **labels, status=s) for s in ("accepted", "duplicate")}
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://example.org/referral", "value": "MET-R1"}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
    }
    headers = {"Content-Type": "application/fhir+json"}
    assert (await http.post("/fhir/ServiceRequest", json=referral, headers=headers)).status_code == 201
    assert (await http.post("/fhir/ServiceRequest", json=referral, headers=headers)).status_code == 200
    after = {s: value("mscc_messages_received_total", **labels, status=s) for s in ("accepted", "duplicate")}
    assert {s: after[s] - before[s] for s in after} == {"accepted": 1, "duplicate": 1}


async def test_queue_depth_and_lag_are_read_from_the_database_when_scraped(intake: IntakeService) -> None:
    scrape = Scrape(intake.store, None, 2.0)
    empty = parsed((await render(scrape)).decode())
    assert empty["mscc_mapper_queue_depth"] == [({}, 0.0)] and empty["mscc_mapper_queue_lag_seconds"] == [({}, 0.0)]

    await send(intake, adt("MET-3"), adt("MET-4"))
    await asyncio.sleep(0.05)  # the oldest message has an age
    queued = parsed((await render(scrape)).decode())
    assert queued["mscc_mapper_queue_depth"] == [({}, 2.0)]
    assert queued["mscc_mapper_queue_lag_seconds"][0][1] > 0

    mapped_before = value("mscc_mapper_messages_total", outcome="mapped")
    await MapperService(intake.store).run(asyncio.Event(), burst=True)
    assert value("mscc_mapper_messages_total", outcome="mapped") - mapped_before == 2
    drained = parsed((await render(scrape)).decode())
    assert drained["mscc_mapper_queue_depth"] == [({}, 0.0)]
    events = await intake.store.outbox.count_documents({"status": "ready"})
    assert events > 0 and drained["mscc_outbox_depth"] == [({}, float(events))]
    assert drained["mscc_outbox_oldest_pending_seconds"][0][1] >= 0


async def test_a_message_held_for_review_is_counted_as_needs_review_not_mapped(intake: IntakeService) -> None:
    """The same NHS number, another birth date and sex: the mapper holds the second message."""
    outcomes = ("mapped", "needs-review")
    before = {o: value("mscc_mapper_messages_total", outcome=o) for o in outcomes}
    # The series is there before any message is held, so an alert's increase() sees the first one.
    assert REGISTRY.get_sample_value("mscc_mapper_messages_total", {"outcome": "needs-review"}) is not None

    await send(intake, adt("MET-H1"))
    await MapperService(intake.store).run(asyncio.Event(), burst=True)
    other = adt("MET-H2").replace(b"DEMO^ALEX||19580214|M", b"OTHER^SAM||19901231|F")
    assert b"OTHER^SAM" in other
    await send(intake, other)
    await MapperService(intake.store).run(asyncio.Event(), burst=True)

    statuses = {d["header"]["control_id"]: d["status"] async for d in intake.store.messages.find({})}
    assert statuses == {"MET-H1": "mapped", "MET-H2": "needs-review"}
    after = {o: value("mscc_mapper_messages_total", outcome=o) for o in outcomes}
    assert {o: after[o] - before[o] for o in outcomes} == {"mapped": 1, "needs-review": 1}


async def test_a_database_that_does_not_answer_never_holds_the_scrape(settings: Settings) -> None:
    # A real port nobody listens on: the driver would wait 10 s to select a server.
    client = connect("mongodb://127.0.0.1:9/?directConnection=true")
    try:
        started = time.monotonic()
        text = (await render(Scrape(Store(client, settings.db_name), None, 0.2))).decode()
        assert time.monotonic() - started < 1.5
    finally:
        await client.close()
    samples = parsed(text)
    assert samples["mscc_metrics_database_up"] == [({}, 0.0)]
    assert "mscc_mapper_queue_depth" not in samples
    assert "mscc_messages_received_total" in samples  # the counters are still there


async def test_background_tasks_report_their_last_cycle_and_restarts(store: Store) -> None:
    registry, stop, beaten, runs = TaskRegistry(), asyncio.Event(), asyncio.Event(), []

    async def loop(heartbeat: Heartbeat) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")
        heartbeat.beat()
        beaten.set()
        await stop.wait()

    task = asyncio.create_task(supervise("mapper", loop, stop, registry, stale_after_s=60, backoff=Backoff(0.01, 0.01)))
    await asyncio.wait_for(beaten.wait(), 10)
    samples = parsed((await render(Scrape(store, registry, 2.0))).decode())
    stop.set()
    await task
    assert samples["mscc_task_restarts_total"] == [({"task": "mapper"}, 1.0)]
    assert samples["mscc_task_healthy"] == [({"task": "mapper"}, 1.0)]
    [(labels, last)] = samples["mscc_task_last_cycle_timestamp_seconds"]
    assert labels == {"task": "mapper"} and abs(last - time.time()) < 30


async def test_a_worker_process_serves_metrics_on_its_own_port(store: Store) -> None:
    registry = TaskRegistry()
    registry.register("notifier-delivery", 60).beat()
    server = MetricsServer.start("127.0.0.1", 0, Scrape(store, registry, 2.0))
    try:
        async with httpx.AsyncClient() as client:  # a real socket to prometheus_client's own server
            answer = await client.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    finally:
        await server.stop()
    assert answer.status_code == 200
    samples = parsed(answer.text)
    assert samples["mscc_metrics_database_up"] == [({}, 1.0)]
    assert samples["mscc_mapper_queue_depth"] == [({}, 0.0)]
    assert samples["mscc_task_healthy"] == [({"task": "notifier-delivery"}, 1.0)]


async def test_a_worker_metrics_port_answers_only_metrics_and_a_pointer_to_them(store: Store) -> None:
    # Like the Prometheus exporters: /metrics (GET and HEAD), a short page on / naming it, nothing else.
    server = MetricsServer.start("127.0.0.1", 0, Scrape(store, TaskRegistry(), 2.0))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            got = await client.get("/metrics")
            head = await client.head("/metrics")
            gzipped = await client.head("/metrics", headers={"Accept-Encoding": "gzip"})
            home = await client.get("/")
            home_head = await client.head("/")
            missing = {path: await client.get(path) for path in ("/nothing", "/favicon.ico", "/metrics/", "/metricsx")}
            missing_head = await client.head("/nothing")
            posted = await client.post("/metrics", content=b"x")
            deleted = await client.delete("/")
            other = await client.request("OPTIONS", "/metrics")
            unknown_posted = await client.post("/nothing")
    finally:
        await server.stop()
    assert got.status_code == 200 and "mscc_metrics_database_up" in got.text
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"] == CONTENT_TYPE
    assert int(head.headers["content-length"]) > 1000  # what GET would send, not the empty body
    assert gzipped.headers["content-encoding"] == "gzip" and int(gzipped.headers["content-length"]) > 0
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/plain")
    assert "/metrics" in home.text and "mscc_" not in home.text
    assert home_head.status_code == 200 and home_head.content == b""
    assert {path: answer.status_code for path, answer in missing.items()} == dict.fromkeys(missing, 404)
    assert "mscc_" not in missing["/nothing"].text
    assert missing_head.status_code == 404 and missing_head.content == b""
    for refused in (posted, deleted, other):
        assert refused.status_code == 405, refused.request.method
        assert refused.headers["allow"] == "GET, HEAD"
        assert "mscc_" not in refused.text
    assert unknown_posted.status_code == 404  # an unknown path is unknown whatever the method


async def test_mscc_mapper_serves_metrics_on_metrics_port(mongodb_uri: str, settings: Settings) -> None:
    with socket.socket() as probe:  # a free port for the child process
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = part_env(mongodb_uri, settings, MSCC_METRICS_PORT=str(port), MSCC_LOG_FORMAT="json")
    with part(env, "mapper") as process:
        head = await wait_for_line(process, "metrics listening")
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        await stop_and_wait(process, signal.SIGTERM, head)
    assert answer.status_code == 200
    samples = parsed(answer.text)
    assert {labels["task"] for labels, _ in samples["mscc_task_healthy"]} == {"mapper", "pathway"}
    assert samples["mscc_metrics_database_up"] == [({}, 1.0)]
    assert samples["mscc_mapper_queue_depth"] == [({}, 0.0)]


def test_the_worker_processes_load_no_http_server_package() -> None:
    # What the mapper and notifier processes import, metrics included, in a fresh interpreter.
    code = (
        "import sys, services.mapper.service, services.mapper.worker, services.notifier.service, shared.metrics\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn'})\n"
        "print(','.join(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", done.stdout


def test_label_values_a_sender_chooses_are_bounded() -> None:
    senders = Bounded(limit=2, width=8)
    assert [senders(v) for v in ("RBL", "RJR", "RBL", "XYZ", "", "A-VERY-LONG-NAME")] == [
        "RBL",
        "RJR",
        "RBL",
        "other",
        "other",
        "other",
    ]
    assert Bounded()("  ") == "unknown" and Bounded(width=4)("ABCDEFG") == "ABCD"
