"""End to end: HL7v2 over MLLP, stored by intake, mapped by the worker, read back through the FHIR API.

Covers the referral lifecycle (REF^I12 -> I13 -> I14), ADT updates and merges, replays, out-of-order
arrival, and that every stored resource validates.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from shared.fhir import validate
from shared.mllp import MllpClient

NHS = "9449305552"


def ref(event: str, control_id: str, when: str, status: str = "A^Accepted", priority: str = "S^STAT") -> bytes:
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{when}||REF^{event}^REF_{event}|{control_id}|P|2.5",
        f"RF1|{status}|{priority}|MSCC^Metastatic spinal cord compression||R^Referral|RBL-REF-77|{when[:8]}|||"
        "Suspected MSCC",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL",
        f"PID|1||{NHS}^^^NHS^NH~RBL123^^^RBL^MR||DEMO^ALEX||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def adt(event: str, control_id: str, when: str, family: str, *, mrg: str | None = None, local: str = "RBL123") -> bytes:
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{when}||ADT^{event}|{control_id}|P|2.4",
        f"EVN|{event}|{when}",
        f"PID|1||{local}^^^RBL^MR||{family}^ALEX||19580214|M",
    ]
    if mrg:
        lines.append(f"MRG|{mrg}^^^RBL^MR")
    lines.append(f"PV1|1|I|WARD1^BED2||||||||||||||||V{control_id}")
    return ("\r".join(lines) + "\r").encode()


async def send(intake: IntakeService, *messages: bytes) -> None:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        for message in messages:
            reply = await client.send(message)
            assert b"MSA|AA|" in reply, reply
    finally:
        await client.close()


async def drain(intake: IntakeService) -> None:
    await MapperService(intake.store).run(asyncio.Event(), burst=True)


async def only(http: httpx.AsyncClient, rtype: str, **params: str) -> dict[str, Any]:
    bundle = (await http.get(f"/fhir/{rtype}", params=params)).json()
    assert bundle["total"] == 1, bundle
    resource: dict[str, Any] = bundle["entry"][0]["resource"]
    return resource


async def all_valid(intake: IntakeService) -> None:
    async for doc in intake.store.resources.find({}):
        validate(doc["resource"])
    async for doc in intake.store.messages.find({"protocol": "hl7v2"}):
        assert doc["status"] == "mapped", (doc["header"]["message_type"], doc.get("processing"))


async def test_referral_lifecycle(http: httpx.AsyncClient, intake: IntakeService) -> None:
    await send(intake, ref("I12", "M1", "20261125080000"))
    await drain(intake)
    referral = await only(http, "ServiceRequest", requester="Organization/RBL")
    assert referral["status"] == "active" and referral["meta"]["versionId"] == "1"
    patient = await only(http, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{NHS}")
    assert referral["subject"]["reference"] == f"Patient/{patient['id']}"
    plan = await only(http, "CarePlan", patient=f"Patient/{patient['id']}")
    mri = plan["activity"][0]["detail"]
    assert mri["scheduledPeriod"]["end"].startswith("2026-11-26T08:00")  # 24 h: neurological signs present

    await send(intake, ref("I13", "M2", "20261125093000", priority="R^Routine"))
    await drain(intake)
    updated = await only(http, "ServiceRequest", requester="Organization/RBL")
    assert updated["id"] == referral["id"] and updated["meta"]["versionId"] == "2"
    replanned = await only(http, "CarePlan", patient=f"Patient/{patient['id']}")
    assert replanned["period"]["start"] == plan["period"]["start"]  # the clock never restarts

    await send(intake, ref("I14", "M3", "20261125110000"))
    await drain(intake)
    cancelled = await only(http, "ServiceRequest", requester="Organization/RBL")
    assert cancelled["status"] == "revoked" and cancelled["meta"]["versionId"] == "3"
    assert await only(http, "Encounter", patient=f"Patient/{patient['id']}", status="cancelled")
    history = (await http.get(f"/fhir/ServiceRequest/{referral['id']}/_history")).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    events = await intake.store.outbox.count_documents({"type": "ServiceRequest"})
    assert events == 3  # one outbox event per change
    await all_valid(intake)


async def test_replay_creates_no_new_versions(http: httpx.AsyncClient, intake: IntakeService) -> None:
    await send(intake, ref("I12", "R1", "20261125080000"))
    await drain(intake)
    versions = await intake.store.history.count_documents({})
    events = await intake.store.outbox.count_documents({})
    await intake.store.messages.update_many({}, {"$set": {"status": "ready"}})  # an operator replays
    await drain(intake)
    assert await intake.store.history.count_documents({}) == versions
    assert await intake.store.outbox.count_documents({}) == events


async def test_update_and_out_of_order_arrival(http: httpx.AsyncClient, intake: IntakeService) -> None:
    await send(intake, adt("A01", "A1", "20261125080000", "DEMO"), adt("A08", "A2", "20261125100000", "RENAMED"))
    await drain(intake)
    patient = await only(http, "Patient", identifier="RBL123")
    assert patient["name"][0]["family"] == "RENAMED" and patient["meta"]["versionId"] == "2"
    # an A08 sent at 09:00 arrives after the 10:00 one: it must not undo it
    await send(intake, adt("A08", "A3", "20261125090000", "OLDNAME"))
    await drain(intake)
    assert (await only(http, "Patient", identifier="RBL123"))["name"][0]["family"] == "RENAMED"
    stale = await intake.store.messages.find_one({"header.control_id": "A3"})
    assert stale is not None and any(w["stale"] for w in stale["processing"]["resources"])
    await all_valid(intake)


async def test_merge_links_patients_without_losing_either(http: httpx.AsyncClient, intake: IntakeService) -> None:
    await send(
        intake,
        adt("A01", "G1", "20261125080000", "KEEP", local="RBL123"),
        adt("A01", "G2", "20261125081000", "GONE", local="RBL999"),
    )
    await drain(intake)
    await send(intake, adt("A40", "G3", "20261125090000", "KEEP", local="RBL123", mrg="RBL999"))
    await drain(intake)
    survivor = await only(http, "Patient", identifier="RBL123")
    merged = await only(http, "Patient", identifier="RBL999")
    assert {"other": {"reference": f"Patient/{merged['id']}"}, "type": "replaces"} in survivor["link"]
    assert merged["active"] is False
    assert any(link["type"] == "replaced-by" for link in merged["link"])
    assert merged["name"][0]["family"] == "GONE"  # its data is kept
    await all_valid(intake)


async def test_a_later_referral_message_keeps_the_pathway_step(http: httpx.AsyncClient, intake: IntakeService) -> None:
    from services.pathway.record import current_step

    await send(intake, ref("I12", "P1", "20261125080000"))
    await drain(intake)
    referral = await only(http, "ServiceRequest", requester="Organization/RBL")
    moved = await http.post(
        f"/fhir/ServiceRequest/{referral['id']}/$transition",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "step", "valueCode": "triaged-accepted"},
                {"name": "time", "valueDateTime": "2026-11-25T08:30:00Z"},
            ],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert moved.status_code == 200, moved.text
    await send(intake, ref("I13", "P2", "20261125093000", priority="R^Routine"))  # knows nothing of the step
    await drain(intake)
    updated = await only(http, "ServiceRequest", requester="Organization/RBL")
    assert int(updated["meta"]["versionId"]) == int(moved.json()["meta"]["versionId"]) + 1  # I13 changed it
    assert current_step(updated) == "triaged-accepted"
