"""One correlation id follows a message: intake's log line and record, the mapper's log line and the outbox
events it writes, the notifier's delivery and its log line. Searching the JSON logs for the id shows the
whole path.

The logs are the hub's own: ``shared.logging.configure`` with ``MSCC_LOG_FORMAT=json``, written to a
buffer for the length of a test. Real parts throughout: intake on a real MLLP socket, the in-process API,
the real mapper and notifier, an aiohttp rest-hook receiver on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from receivers import FHIR_JSON, RBL_REFERRALS, loopback_settings, post_subscription, rest_hook_channel, serve_http
from receivers import subscription_body as subscription

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.service import NotifierService
from shared import correlation
from shared.logging import configure
from shared.metrics import REGISTRY
from shared.mllp import MllpClient
from shared.settings import Settings

NHS = "9449305552"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
TRACE = "trust-engine-7f3a.0042"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=5.0)


@contextlib.contextmanager
def json_logs(settings: Settings) -> Iterator[io.StringIO]:
    """The hub's logging as configured in production with MSCC_LOG_FORMAT=json, into a buffer; the
    test session's own handlers are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    with contextlib.redirect_stderr(out):  # configure() writes to the stderr of the moment
        configure(settings.model_copy(update={"log_format": "json", "log_level": "INFO"}))
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in out.getvalue().splitlines()]


def rooms(logged: list[dict[str, Any]], correlation_id: str) -> set[str]:
    """The parts of the hub (intake, mapper, notifier...) that logged a line carrying ``correlation_id``."""
    return {
        line["logger"].split(".")[1]
        for line in logged
        if line.get("correlation_id") == correlation_id and line["logger"].startswith("services.")
    }


def referral(value: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
        "requester": {"identifier": {"system": ODS, "value": "RBL"}},
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }


def ref_i12(control_id: str) -> bytes:
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|20261125080000||REF^I12^REF_I12|{control_id}|P|2.5",
        "RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|RBL-REF-91|20261125|||Suspected",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL",
        f"PID|1||{NHS}^^^NHS^NH~RBL123^^^RBL^MR||DEMO^ALEX||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


@contextlib.asynccontextmanager
async def rest_hook() -> Any:
    """A receiver answering 200 to everything; yields its endpoint and the bodies it was sent."""
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    async with serve_http(handle) as base:
        yield f"{base}/hook", received


async def test_a_referral_is_traced_by_the_id_its_sender_gave_from_intake_to_its_delivery(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, settings: Settings
) -> None:
    store = intake.store
    async with rest_hook() as (endpoint, received):
        body = subscription(
            settings,
            rest_hook_channel(endpoint, "id-only"),
            topic="referral-status",
            reason="AOS",
            filters=[RBL_REFERRALS],
        )
        sub_id = await post_subscription(http, body)
        delivered_before = REGISTRY.get_sample_value(
            "mscc_notifier_deliveries_total", {"subscription": sub_id, "channel": "rest-hook", "outcome": "delivered"}
        )
        with json_logs(settings) as out:
            answer = await http.post(
                "/fhir/ServiceRequest", json=referral("COR-1"), headers={**FHIR_JSON, "X-Correlation-Id": TRACE}
            )
            assert answer.status_code == 201, answer.text
            assert answer.headers["X-Correlation-Id"] == TRACE
            await MapperService(store).run(asyncio.Event(), burst=True)
            await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)
        assert len(received) >= 2  # the handshake, then the referral's notification
    logged = lines(out)
    assert {"intake", "mapper", "notifier"} <= rooms(logged, TRACE), [
        line for line in logged if "correlation_id" in line
    ]

    record = await store.messages.find_one({"protocol": "fhir", "header.interaction": "create"})
    assert record is not None and record["correlation_id"] == TRACE
    events = [e async for e in store.outbox.find({"message_id": record["_id"]})]
    assert events and {e["correlation_id"] for e in events} == {TRACE}  # the create's and the mapper's
    deliveries = [d async for d in store.deliveries.find({"subscription_id": sub_id})]
    assert deliveries and {d["event"]["correlation_id"] for d in deliveries} == {TRACE}
    delivered = REGISTRY.get_sample_value(
        "mscc_notifier_deliveries_total", {"subscription": sub_id, "channel": "rest-hook", "outcome": "delivered"}
    )
    assert (delivered or 0) - (delivered_before or 0) == len(deliveries)


async def test_an_mllp_message_is_traced_by_its_record_id(intake: IntakeService, settings: Settings) -> None:
    with json_logs(settings) as out:
        client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
        try:
            assert b"MSA|AA|" in await client.send(ref_i12("COR-2"))
        finally:
            await client.close()
        await MapperService(intake.store).run(asyncio.Event(), burst=True)
    record = await intake.store.messages.find_one({"header.control_id": "COR-2"})
    assert record is not None and record["correlation_id"] == record["_id"]
    assert {"intake", "mapper"} <= rooms(lines(out), record["_id"])
    events = [e async for e in intake.store.outbox.find({"message_id": record["_id"]})]
    assert events and {e["correlation_id"] for e in events} == {record["_id"]}


async def test_the_answer_echoes_the_id_under_the_name_it_was_sent(http: httpx.AsyncClient) -> None:
    hl7 = ref_i12("COR-3")
    sent = await http.post(
        "/hl7v2", content=hl7, headers={"Content-Type": "application/hl7-v2", "X-Request-Id": "req-1"}
    )
    assert sent.status_code == 200 and sent.headers["X-Request-Id"] == "req-1"
    assert "X-Correlation-Id" not in sent.headers
    # An id that is not one (spaces, quotes, 200 characters) is not used: the record keeps its own id.
    bad = await http.post(
        "/hl7v2", content=ref_i12("COR-4"), headers={"Content-Type": "application/hl7-v2", "X-Correlation-Id": "a b"}
    )
    assert bad.status_code == 200 and "X-Correlation-Id" not in bad.headers
    assert correlation.sent('"quoted"') is None and correlation.sent("x" * 200) is None
    assert correlation.sent(" ok-1 ") == "ok-1"
    plain = await http.get("/healthz")
    assert "X-Correlation-Id" not in plain.headers and "X-Request-Id" not in plain.headers


async def test_every_line_is_json_and_a_record_id_is_never_masked(settings: Settings) -> None:
    record_id = "0a1234567890b1234567890c12345678"  # digit runs that look like NHS numbers
    log = logging.getLogger("services.intake.test")
    with json_logs(settings) as out:
        with correlation.bound(record_id):
            log.info("message received", extra={"record": "x"})
            with correlation.bound("9449305552"):  # an id a caller chose is masked like any value
                log.warning('with\nnew lines and "quotes"')
        log.info("nothing bound")
    first, second, third = lines(out)
    assert first["correlation_id"] == record_id and first["level"] == "INFO"
    assert second["correlation_id"] == "944*****2" and second["message"] == 'with\nnew lines and "quotes"'
    assert "correlation_id" not in third
