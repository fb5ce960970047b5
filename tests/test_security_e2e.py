"""End to end with real tokens: two trusts and the MSCC team, over real HTTP and MLLP.

Wirral (RBL) authenticates with a signed JWT (private_key_jwt), Bolton (RJR) with a secret, the MSCC team
(the hub's own organisation) with a key too; every call carries a real access token from the token
endpoint, over a real socket to uvicorn on loopback. RBL subscribes to its referrals (a real aiohttp
receiver), sends a FHIR referral and HL7v2 referrals (over HTTP with its token, and over MLLP); the mapper
and the notifier run in process. RBL's receiver gets the notifications; RJR sees none of RBL's resources
and its own subscription receives nothing; the MSCC team sees everything, and its pathway move reaches
RBL; the audit trail names who did what, and how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from helpers import serve_app
from receivers import loopback_settings, receiving, rest_hook_channel, subscription_body
from tokens import TestClient, auth_headers, register
from trusts import MSCC

from services.api.app import create_app
from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from shared.mllp import MllpClient
from shared.nhs import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM
from shared.settings import Settings
from shared.store import Store

FHIR = {"Content-Type": "application/fhir+json"}
NHS = "9449305552"
TRUST_SCOPES = [
    "system/*.rs",
    "system/ServiceRequest.cu",
    "system/Bundle.c",
    "system/Subscription.cud",
    "system/hl7v2.c",
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0)


@contextlib.asynccontextmanager
async def serving(intake: IntakeService) -> AsyncIterator[str]:
    """The hub's HTTP application on a loopback port (uvicorn); yields its base URL."""
    async with serve_app(create_app(intake)) as url:
        yield url


@contextlib.asynccontextmanager
async def calling(base: str, client: TestClient, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the socket whose every request carries ``client``'s access token."""
    async with httpx.AsyncClient(base_url=base) as http:
        http.headers.update(await auth_headers(http, client, settings))
        yield http


def referral_v2(control: str, number: str) -> bytes:
    lines = [
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261125093000||REF^I12^REF_I12|{control}|P|2.5",
        f"RF1|A|S^Urgent|ONC^Oncology||R|{number}^ICE|20261125090000",
        "PRD|RP|OKAFOR^ADAEZE^^^Dr||||^WPN^PH^^^0151^6785432|||||^^^^^^^^^RBL",
        f"PID|1||X{number}^^^PAS^MR~{NHS}^^^NHS^NH||JONES^DAVID||19561104|M",
        "PV1|1|I|Ward 5^^^RBL",
    ]
    return ("\r".join(lines) + "\r").encode()


def referral_fhir(number: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://wirral.example.nhs.uk/Id/referral", "value": number}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS}},
        "requester": {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}},
    }


def subscription(settings: Settings, url: str, trust: str) -> dict[str, Any]:
    filters = [f"ServiceRequest?requester=Organization/{trust}"]
    return subscription_body(
        settings, rest_hook_channel(url), topic="referral-status", reason=f"{trust} Acute Oncology", filters=filters
    )


async def process(store: Store, settings: Settings) -> None:
    """The mapper, then the notifier, each until nothing is left (in process, as the workers would)."""
    await MapperService(store).run(asyncio.Event(), burst=True)
    async with client_session(settings) as session:
        await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)


async def audit(mscc: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    """The MSCC team's search of the audit trail (events are written just after each answer: wait)."""
    for _ in range(100):
        answer = await mscc.get("/fhir/AuditEvent", params={**params, "_count": "100"})
        assert answer.status_code == 200, answer.text
        found = [e["resource"] for e in answer.json().get("entry", [])]
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


def named(event: dict[str, Any]) -> tuple[str, str, str]:
    """(ODS code, interaction, outcome) of an AuditEvent."""
    who = event["agent"][0]["who"].get("identifier", {}).get("value", "")
    return who, event["subtype"][0]["code"], event["outcome"]


async def test_two_trusts_and_the_mscc_team_end_to_end_with_real_tokens(
    intake: IntakeService, store: Store, settings: Settings
) -> None:
    rbl = await register(store, "RBL", TRUST_SCOPES, key="ES256")  # private_key_jwt
    rjr = await register(store, "RJR", TRUST_SCOPES)  # client secret
    team = await register(store, MSCC, ["system/*.cruds", "system/hl7v2.c"], key="RS256")
    async with (
        receiving() as rbl_hook,
        receiving() as rjr_hook,
        serving(intake) as base,
        calling(base, rbl, settings) as a,
        calling(base, rjr, settings) as b,
        calling(base, team, settings) as mscc,
    ):
        # Each trust subscribes to its own referrals; RJR may not subscribe to RBL's.
        assert (
            await a.post("/fhir/Subscription", json=subscription(settings, rbl_hook.url, "RBL"), headers=FHIR)
        ).status_code == 201
        assert (
            await b.post("/fhir/Subscription", json=subscription(settings, rjr_hook.url, "RJR"), headers=FHIR)
        ).status_code == 201
        stolen = await b.post("/fhir/Subscription", json=subscription(settings, rjr_hook.url, "RBL"), headers=FHIR)
        assert stolen.status_code == 403

        # RBL refers: FHIR over HTTP, HL7v2 over HTTP (its token), HL7v2 over MLLP.
        created = await a.post("/fhir/ServiceRequest", json=referral_fhir("E2E-1"), headers=FHIR)
        assert created.status_code == 201, created.text
        over_http = await a.post(
            "/hl7v2", content=referral_v2("E2E-2", "800002"), headers={"Content-Type": "application/hl7-v2"}
        )
        assert "MSA|AA" in over_http.text, over_http.text
        mllp = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
        try:
            assert b"MSA|AA|" in await mllp.send(referral_v2("E2E-3", "800003"))
        finally:
            await mllp.close()
        await process(store, settings)

        referrals = [d["id"] async for d in store.resources.find({"type": "ServiceRequest", "trusts": "RBL"})]
        assert len(referrals) == 3 and created.json()["id"] in referrals
        assert sorted(set(rbl_hook.ids()) & set(referrals)) == sorted(referrals)  # RBL told of each
        assert "event-notification" not in rjr_hook.kinds  # RJR told of nothing

        # RJR sees none of it: reads are 404, searches empty (by NHS number too); the MSCC team sees all.
        first = referrals[0]
        assert (await b.get(f"/fhir/ServiceRequest/{first}")).status_code == 404
        assert (await b.get("/fhir/ServiceRequest")).json()["total"] == 0
        assert (await b.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{NHS}"})).json()["total"] == 0
        assert (await a.get("/fhir/ServiceRequest")).json()["total"] == 3
        assert (await mscc.get("/fhir/ServiceRequest")).json()["total"] == 3
        assert (await mscc.get(f"/fhir/ServiceRequest/{first}")).status_code == 200

        # The MSCC team moves RBL's referral along the pathway: RBL is told, RJR is not.
        told = len(rbl_hook.events())
        moved = await mscc.post(
            f"/fhir/ServiceRequest/{first}/$transition",
            json={"resourceType": "Parameters", "parameter": [{"name": "step", "valueCode": "triaged-accepted"}]},
            headers=FHIR,
        )
        assert moved.status_code == 200, moved.text
        await process(store, settings)
        after = rbl_hook.events()[told:]
        assert any(first in e.ids and "triaged-accepted" in json.dumps(e.status) for e in after)
        assert "event-notification" not in rjr_hook.kinds

        # The audit trail: who, what, how it went.
        by_rjr = {named(e) for e in await audit(mscc, agent=rjr.client_id, entity=f"ServiceRequest/{first}")}
        assert ("RJR", "read", "4") in by_rjr
        by_rbl = {named(e) for e in await audit(mscc, agent=rbl.client_id)}
        assert {("RBL", "create", "0"), ("RBL", "search-type", "0")} <= by_rbl
        moves = await audit(mscc, agent=team.client_id, entity=f"ServiceRequest/{first}")
        assert any(named(e) == (MSCC, "operation", "0") and e["action"] == "U" for e in moves)
        assert (await b.get("/fhir/AuditEvent")).status_code == 403  # the trail is the MSCC team's
