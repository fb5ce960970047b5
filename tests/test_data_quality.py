"""Every referral names the trust to notify, and what a referral lacks goes back to the referrer.

Real traffic end to end: HL7v2 over HTTP and FHIR into intake, the mapper, the real store, the notifier
delivering to a real aiohttp receiver on loopback. Resources are found by search, never by ids built
here from identifier systems.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from receivers import (
    RBL_REFERRALS,
    ack,
    answer_frames,
    loopback_settings,
    message_channel,
    notification_type,
    post_subscription,
    rest_hook_channel,
    serve_http,
    serve_tcp,
    subscription_body,
)

from services.intake.service import IntakeService
from services.mapper.hl7 import map_hl7v2
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.notifier.backport import FILTER_CRITERIA
from services.notifier.service import NotifierService
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import topic_url
from services.pathway.data_quality import Referral, minimum_data, primary_cancer, referral_task
from shared.auth import Caller
from shared.er7 import parse_message
from shared.fhir import FhirError
from shared.settings import Settings
from shared.store import Store

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0)


@dataclass
class Receiver:
    """A rest-hook receiver on loopback: keeps every event notification's Bundle, answers 200."""

    bundles: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        bundle = json.loads(await request.read())
        if notification_type(bundle) == "event-notification":
            self.bundles.append(bundle)
        return web.Response(status=200)

    def focus(self) -> list[dict[str, Any]]:
        """The full resource each notification carried, in order."""
        return [b["entry"][1]["resource"] for b in self.bundles]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    async with serve_http(rec.handle) as base:
        rec.url = f"{base}/hook"
        yield rec


async def subscribe(http: httpx.AsyncClient, settings: Settings, url: str, topic: str, *filters: str) -> str:
    body = subscription_body(
        settings, rest_hook_channel(url), topic=topic, reason="Acute Oncology updates", filters=filters
    )
    return await post_subscription(http, body)


async def send_hl7(http: httpx.AsyncClient, *segments: str) -> str:
    answer = await http.post(
        "/hl7v2", content="\r".join(segments) + "\r", headers={"Content-Type": "application/hl7-v2"}
    )
    assert answer.status_code == 200 and "MSA|AA" in answer.text, answer.text
    return answer.text


async def run(intake: IntakeService, session: aiohttp.ClientSession) -> None:
    """Map everything ready, then deliver every notification due."""
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)
    await NotifierService(intake.store, intake.settings, session).run(asyncio.Event(), burst=True)


async def search(http: httpx.AsyncClient, path: str, **params: str) -> list[dict[str, Any]]:
    found = await http.get(f"/fhir/{path}", params=params)
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


def missing(task: dict[str, Any]) -> list[str]:
    return [entry["type"]["coding"][0]["code"] for entry in task.get("input", [])]


# --- traffic ----------------------------------------------------------------------------------------


def msh(facility: str, event: str, control: str) -> str:
    return f"MSH|^~\\&|ICE|{facility}|MSCC-HUB|REN|20261125093000||REF^{event}^REF_I12|{control}|P|2.5"


def prd_segment(name: str, *, telecom: str = "", organisation: str = "") -> str:
    """A referring provider: PRD-2 name, PRD-5 telecom, PRD-10 organisation (XON.10 its ODS code)."""
    xon = f"^^^^^^^^^{organisation}" if organisation else ""
    return "|".join(["PRD", "RP", name, "", "", telecom, "", "", "", "", xon])


RF1 = "RF1|A|S^Urgent|ONC^Oncology||R|500001^ICE|20261125090000"
PID_NHS = "PID|1||X100234^^^PAS^MR~9449305552^^^NHS^NH||JONES^MARY^ANN||19700312|F|||12 Beach Rd^^Wirral^^CH41 1AA"
PID_LOCAL = "PID|1||X100234^^^PAS^MR||JONES^MARY^ANN||19700312|F|||12 Beach Rd^^Wirral^^CH41 1AA"
PV1 = "PV1|1|I|Ward 5^^^RBL||||C3344^Patel^Ravi^^^Dr"
DG1_PROSTATE = "DG1|1||C61^Malignant neoplasm of prostate^I10||20250301|F"
NEURO_WEAK = "OBX|1|TX|MSCC-NEURO^Neurological status||Weakness both legs since yesterday, can't weight bear||||||F"
NTE = "NTE|1||Pt seen on ward by SpR, back pain 3/52 worse at night. pls review asap"


async def test_a_prd_without_organisation_is_routed_to_the_sending_trust(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """PRD-4 and PRD-10 empty: the requester's organisation is MSH-4 (RBL), so RBL's ordinary
    requester filter matches the referral and RBL's referral-status subscription is notified."""
    await subscribe(http, intake.settings, receiver.url, "referral-status", "ServiceRequest?requester=Organization/RBL")
    prd = prd_segment("OKAFOR^ADAEZE^^^Dr")
    await send_hl7(http, msh("RBL", "I12", "RBL-0001"), RF1, prd, PID_NHS, PV1, DG1_PROSTATE, NEURO_WEAK, NTE)
    await run(intake, session)

    [request] = await search(http, "ServiceRequest", requester="Organization/RBL")
    [role] = [c for c in request["contained"] if c["id"] == "requester"]
    assert role["organization"]["identifier"] == {"system": ODS, "value": "RBL"}
    assert role["practitioner"]["display"]
    assert [r["id"] for r in receiver.focus() if r["resourceType"] == "ServiceRequest"] == [request["id"]]
    record = await intake.store.messages.find_one({"processing.status": "mapped"})
    assert record is not None
    assert not [i for i in record["processing"]["issues"] if i["severity"] == "warning" and "PRD" in str(i)]


async def test_a_referral_without_any_prd_names_the_sending_trust_as_requester(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession
) -> None:
    await send_hl7(http, msh("RJR", "I12", "RJR-0042"), RF1, PID_NHS, PV1)
    await run(intake, session)
    [request] = await search(http, "ServiceRequest", requester="Organization/RJR")
    assert request["requester"]["identifier"] == {"system": ODS, "value": "RJR"}
    assert not await search(http, "ServiceRequest", requester="Organization/RBL")


async def test_a_referral_naming_no_trust_is_flagged_and_its_task_reaches_the_mscc_team(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """MSH-4 is a site name, not an ODS code, and PRD names no organisation: a warning on the message
    record, a data-quality Task without owner, and the MSCC team (REN) is told."""
    await subscribe(http, intake.settings, receiver.url, "data-quality", "Task?requester=Organization/REN")
    prd = prd_segment("OKAFOR^ADAEZE^^^Dr", telecom="^WPN^PH^^^0151^6785432")
    await send_hl7(http, msh("WESTGATE MIU", "I12", "WG-17"), RF1, prd, PID_NHS, PV1, DG1_PROSTATE, NEURO_WEAK, NTE)
    await run(intake, session)

    record = await intake.store.messages.find_one({"processing.status": "mapped"})
    assert record is not None
    flagged = [i for i in record["processing"]["issues"] if "referring organisation" in i["diagnostics"]]
    assert [i["severity"] for i in flagged] == ["warning"]
    [request] = await search(http, "ServiceRequest")
    [task] = await search(http, "Task", focus=f"ServiceRequest/{request['id']}")
    assert "owner" not in task and task["status"] == "requested"
    assert missing(task) == ["referring-organisation"]
    assert [r["id"] for r in receiver.focus()] == [task["id"]]


async def test_missing_items_go_to_the_referrer_and_a_ref_i13_completes_them(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A referral without NHS number, referrer contact, primary cancer or neurological status: a Task
    owned by RBL listing exactly those, notified to RBL's ordinary requester filter; REF^I13s supplying
    them change the list, then complete it, each notified."""
    await subscribe(http, intake.settings, receiver.url, "data-quality", "ServiceRequest?requester=Organization/RBL")
    prd = prd_segment("OKAFOR^ADAEZE^^^Dr", organisation="RBL")
    await send_hl7(http, msh("RBL", "I12", "RBL-0100"), RF1, prd, PID_LOCAL, PV1, NTE)
    await run(intake, session)

    [request] = await search(http, "ServiceRequest", requester="Organization/RBL")
    [task] = await search(http, "Task", focus=f"ServiceRequest/{request['id']}")
    assert task["status"] == "requested"
    assert task["owner"]["identifier"] == {"system": ODS, "value": "RBL"}
    assert missing(task) == ["nhs-number", "referrer-contact", "primary-cancer", "neurological-status"]
    assert task["focus"] == task["basedOn"][0] == {"reference": f"ServiceRequest/{request['id']}"}
    assert task["for"] == request["subject"]
    assert [t["status"] for t in receiver.focus()] == ["requested"]

    # The referrer sends contact, diagnosis and neurological status; the NHS number is still to come.
    prd_phone = prd_segment("OKAFOR^ADAEZE^^^Dr", telecom="^WPN^PH^^^0151^6785432", organisation="RBL")
    await send_hl7(http, msh("RBL", "I13", "RBL-0101"), RF1, prd_phone, PID_LOCAL, PV1, DG1_PROSTATE, NEURO_WEAK)
    await run(intake, session)
    [task] = await search(http, "Task", focus=f"ServiceRequest/{request['id']}")
    assert missing(task) == ["nhs-number"] and task["status"] == "requested"

    # A resend of the same content changes nothing and tells no one again.
    await send_hl7(http, msh("RBL", "I13", "RBL-0102"), RF1, prd_phone, PID_LOCAL, PV1, DG1_PROSTATE, NEURO_WEAK)
    await run(intake, session)
    assert [missing(t) for t in receiver.focus()] == [
        ["nhs-number", "referrer-contact", "primary-cancer", "neurological-status"],
        ["nhs-number"],
    ]

    await send_hl7(http, msh("RBL", "I13", "RBL-0103"), RF1, prd_phone, PID_NHS, PV1, DG1_PROSTATE, NEURO_WEAK)
    await run(intake, session)
    [task] = await search(http, "Task", focus=f"ServiceRequest/{request['id']}")
    assert task["status"] == "completed" and "input" not in task
    assert [t["status"] for t in receiver.focus()] == ["requested", "requested", "completed"]


async def test_an_mllp_subscriber_gets_an_rri_i12_naming_the_patient_and_what_is_missing(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession
) -> None:
    """A trust whose engine speaks only HL7v2 follows data quality over MLLP: the Task's patient fills
    PID-3 (the Task names it in ``for``, not ``subject``) and each missing item is an NTE."""
    received: list[bytes] = []

    async def answer(message: bytes) -> str:
        received.append(message)
        return ack(message.decode())

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_frames(reader, writer, answer)

    async with serve_tcp(serve) as port:
        channel = message_channel(intake.settings, f"mllp://127.0.0.1:{port}", header=["MSH-5: AOS", "MSH-6: RBL"])
        reason = "data quality to the Wirral engine"
        body = subscription_body(intake.settings, channel, topic="data-quality", reason=reason, filters=[RBL_REFERRALS])
        await post_subscription(http, body)
        prd = prd_segment("OKAFOR^ADAEZE^^^Dr", organisation="RBL")
        await send_hl7(http, msh("RBL", "I12", "RBL-0300"), RF1, prd, PID_NHS, PV1, DG1_PROSTATE)
        await run(intake, session)
    [message] = received
    parsed = parse_message(message.decode())
    pid = parsed.first("PID")
    assert pid is not None and pid.field(3).startswith("9449305552^^^NHS^NH")
    notes = [seg.field(3) for seg in parsed.segments if seg.name == "NTE"]
    assert [n.split(":")[1].strip() for n in notes if n.startswith("Missing:")] == [
        "Referrer contact",
        "Neurological status",
    ]


async def test_a_complete_referral_gets_a_completed_task_and_no_notification(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await subscribe(http, intake.settings, receiver.url, "data-quality", "Task?owner=Organization/REM")
    prd = prd_segment("MCGRATH^SIOBHAN^^^Dr", telecom="^WPN^PH^^^0151^7062000", organisation="REM")
    await send_hl7(http, msh("REM", "I12", "REM-7"), RF1, prd, PID_NHS, PV1, DG1_PROSTATE, NEURO_WEAK)
    await run(intake, session)
    [task] = await search(http, "Task", owner="Organization/REM")
    assert task["status"] == "completed" and "input" not in task
    assert receiver.bundles == []


async def test_a_fhir_referral_missing_items_gets_the_same_task(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await subscribe(http, intake.settings, receiver.url, "data-quality", "Task?owner=Organization/RBL")
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://fhir.wirral.example.nhs.uk/Id/referral", "value": "WR-5521"}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": {"identifier": {"system": NHS, "value": "9449305552"}},
        "requester": {"type": "Organization", "identifier": {"system": ODS, "value": "RBL"}},
        "reasonCode": [{"text": "Suspected MSCC"}],
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }
    created = await http.post("/fhir/ServiceRequest", json=referral, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    await run(intake, session)
    [task] = await search(http, "Task", owner="Organization/RBL")
    assert task["focus"] == {"reference": f"ServiceRequest/{created.json()['id']}"}
    assert missing(task) == ["referrer-contact", "primary-cancer", "neurological-status"]
    assert [t["id"] for t in receiver.focus()] == [task["id"]]
    assert await search(http, "Task", status="requested", _id=task["id"])

    # The referrer updates the referral (a transaction PUT): contact, primary cancer, neurology given.
    updated = {
        **referral,
        "id": created.json()["id"],
        "contained": [
            {
                "resourceType": "Organization",
                "id": "aos",
                "identifier": [{"system": ODS, "value": "RBL"}],
                "name": "Wirral Acute Oncology Service",
                "telecom": [{"system": "phone", "value": "0151 678 5111", "use": "work"}],
            },
            {
                "resourceType": "Observation",
                "id": "neuro",
                "status": "final",
                "code": {"coding": [{"system": "urn:mscc:code:referral-information", "code": "neurological-status"}]},
                "subject": referral["subject"],
                "valueString": "no neurological deficit",
            },
        ],
        "requester": {"reference": "#aos"},
        "reasonCode": [{"text": "Suspected MSCC"}, {"text": "Ca breast 2021, bone mets"}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{created.json()['id']}",
                "resource": updated,
                "request": {"method": "PUT", "url": f"ServiceRequest/{created.json()['id']}"},
            }
        ],
    }
    answer = await http.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code in (200, 202), answer.text
    await run(intake, session)
    [task] = await search(http, "Task", owner="Organization/RBL")
    assert task["status"] == "completed" and "input" not in task
    assert [t["status"] for t in receiver.focus()] == ["requested", "completed"]


async def test_tasks_are_readable_searchable_and_in_the_capability_statement(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession
) -> None:
    await send_hl7(http, msh("RBL", "I12", "RBL-0200"), RF1, PID_NHS, PV1)
    await run(intake, session)
    [patient] = await search(http, "Patient", identifier=f"{NHS}|9449305552")
    [task] = await search(http, "Task", patient=f"Patient/{patient['id']}")
    read = await http.get(f"/fhir/Task/{task['id']}")
    assert read.status_code == 200 and read.json()["code"]["text"] == minimum_data().task_text
    metadata = (await http.get("/fhir/metadata")).json()
    [entry] = [r for r in metadata["rest"][0]["resource"] if r["type"] == "Task"]
    assert {"owner", "focus", "patient", "status"} <= {p["name"] for p in entry["searchParam"]}


async def test_a_trust_cannot_follow_the_mscc_teams_tasks(store: Store, settings: Settings) -> None:
    """``Task?requester=Organization/REN`` names REN as the subscription's trust: only REN may hold it."""
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "data quality",
        "criteria": topic_url(settings.base_url, "data-quality"),
        "_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": "Task?requester=Organization/REN"}]},
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"},
    }
    with pytest.raises(FhirError) as refused:
        await SubscriptionService(store, settings).create(body, Caller("aos-rbl", "RBL"))
    assert refused.value.status == 403


@pytest.mark.parametrize(
    ("reason", "names_primary"),
    [
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C61"}]}, True),
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C50.9"}]}, True),
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C79.5"}]}, False),
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "G95.2"}]}, False),
        ({"text": "Suspected MSCC"}, False),
        ({"text": "Suspected metastatic spinal cord compression"}, False),
        ({"text": "Secondary malignant neoplasm of bone"}, False),
        ({"text": "bone mets"}, False),
        ({"text": "Ca prostate dx 2019 on zoladex"}, True),
        ({"text": "Metastatic breast cancer"}, True),
        ({"text": "Myeloma"}, True),
        ({"text": "unknown primary, under CUP team"}, True),
        ({"text": "back pain"}, False),
    ],
)
def test_which_reasons_name_the_primary_cancer(reason: dict[str, Any], names_primary: bool) -> None:
    item = next(i for i in minimum_data().items if i.key == "primary-cancer")
    request = {"resourceType": "ServiceRequest", "id": "r1", "reasonCode": [reason]}
    assert (primary_cancer(Referral(request), item) is None) is names_primary


def test_a_linked_diagnosis_counts_only_when_it_names_a_primary() -> None:
    """DG1 Conditions are linked by ``reasonReference``: a secondary in bone alone still asks for the
    primary; a FHIR link the hub cannot read (no display) is trusted."""
    item = next(i for i in minimum_data().items if i.key == "primary-cancer")
    secondary = {
        "resourceType": "ServiceRequest",
        "id": "r2",
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C79.5"}]}],
        "reasonReference": [
            {"reference": "Condition/c1", "display": "Diagnosis: Secondary malignant neoplasm of bone"}
        ],
    }
    assert primary_cancer(Referral(secondary), item) == item.ask
    unreadable = {"resourceType": "ServiceRequest", "id": "r3", "reasonReference": [{"reference": "Condition/c9"}]}
    assert primary_cancer(Referral(unreadable), item) is None
    contained = {
        "resourceType": "ServiceRequest",
        "id": "r4",
        "contained": [{"resourceType": "Condition", "id": "dx", "code": {"text": "Adenocarcinoma of lung"}}],
    }
    assert primary_cancer(Referral(contained), item) is None


async def test_a_cancelled_referral_cancels_its_open_task(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """REF^I14 for a referral still missing data: nobody needs the data now, the Task is cancelled and
    the referrer told so (not asked again)."""
    await subscribe(http, intake.settings, receiver.url, "data-quality", "ServiceRequest?requester=Organization/RJR")
    prd = prd_segment("HUGHES^GARETH^^^Dr", organisation="RJR")
    await send_hl7(http, msh("RJR", "I12", "RJR-0900"), RF1, prd, PID_NHS, PV1, NTE)
    await send_hl7(http, msh("RJR", "I14", "RJR-0901").replace("093000", "101500"), RF1, prd, PID_NHS, PV1)
    await run(intake, session)
    [request] = await search(http, "ServiceRequest", requester="Organization/RJR")
    [task] = await search(http, "Task", focus=f"ServiceRequest/{request['id']}")
    assert request["status"] == "revoked" and task["status"] == "cancelled"
    assert [t["status"] for t in receiver.focus()][-1] == "cancelled"


def test_the_rules_read_any_contained_resource_without_failing() -> None:
    """A contained PractitionerRole has a list in ``code``; reading the referral must not fail on it."""
    request = {
        "resourceType": "ServiceRequest",
        "id": "r5",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "#requester"},
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "requester",
                "code": [{"text": "Referring provider"}],
                "organization": {"identifier": {"system": ODS, "value": "RBL"}},
                "telecom": [{"system": "phone", "value": "0151 678 5111"}],
            }
        ],
    }
    task = referral_task(request)
    assert [entry["type"]["coding"][0]["code"] for entry in task["input"]] == [
        "nhs-number",
        "primary-cancer",
        "neurological-status",
    ]
    assert task["owner"]["identifier"]["value"] == "RBL"


@pytest.mark.parametrize(
    "obx",
    [
        "OBX|1|ST|MSCC-PRIMARY^Primary cancer||Breast, dx 2019, on letrozole||||||F",
        "OBX|1|TX|PRIM^Primary tumour site^L||Lung (adenoCa) - per oncology letter||||||F",
    ],
)
def test_an_obx_naming_the_primary_cancer_supplies_it(obx: str) -> None:
    """No DG1, but the referrer's OBX states the primary: it is recognised as the primary-cancer item
    (by code, or by its OBX-3 text) and not asked for."""
    text = "\r".join(
        [msh("RBL", "I12", "RBL-0400"), RF1, prd_segment("OKAFOR^ADAEZE^^^Dr", organisation="RBL"), PID_NHS, PV1, obx]
    )
    result = map_hl7v2(text)
    [task] = [r for r in result.resources if r["resourceType"] == "Task"]
    assert missing(task) == ["referrer-contact", "neurological-status"]


async def test_a_fhir_put_supplying_the_missing_items_completes_the_task(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """The referrer corrects its referral with PUT (If-Match): the Task is re-derived in the same
    transaction, completed, and the trust is told."""
    await subscribe(http, intake.settings, receiver.url, "data-quality", "ServiceRequest?requester=Organization/REM")
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://fhir.liverpool.example.nhs.uk/Id/referral", "value": "LUH-88213"}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS, "value": "9449305552"}},
        "requester": {"type": "Organization", "identifier": {"system": ODS, "value": "REM"}},
        "authoredOn": "2026-11-25T22:40:00+00:00",
    }
    created = await http.post("/fhir/ServiceRequest", json=referral, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    await run(intake, session)
    [task] = await search(http, "Task", focus=f"ServiceRequest/{rid}")
    assert missing(task) == ["referrer-contact", "primary-cancer", "neurological-status"]

    read = await http.get(f"/fhir/ServiceRequest/{rid}")
    body = read.json()
    body["contained"] = [
        {
            "resourceType": "PractitionerRole",
            "id": "aos",
            "code": [{"text": "Acute oncology nurse specialist"}],
            "organization": {"identifier": {"system": ODS, "value": "REM"}},
            "telecom": [{"system": "phone", "value": "0151 706 2000 bleep 4411"}],
        },
        {
            "resourceType": "Observation",
            "id": "neuro",
            "status": "final",
            "code": {"coding": [{"system": "urn:mscc:code:referral-information", "code": "neurological-status"}]},
            "subject": body["subject"],
            "valueString": "numbness both feet, sensory level T10",
        },
    ]
    body["requester"] = {"reference": "#aos"}
    body["reasonCode"] = [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C34.9"}]}]
    put = await http.put(
        f"/fhir/ServiceRequest/{rid}", json=body, headers=FHIR_JSON | {"If-Match": read.headers["ETag"]}
    )
    assert put.status_code == 200, put.text
    [task] = await search(http, "Task", focus=f"ServiceRequest/{rid}")
    assert task["status"] == "completed" and "input" not in task
    await run(intake, session)
    assert [t["status"] for t in receiver.focus()] == ["requested", "completed"]
