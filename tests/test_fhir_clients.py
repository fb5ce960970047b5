"""The hub driven by real FHIR client libraries over a real HTTP server (uvicorn on a loopback port).

fhirpy (its async client, on the test's event loop) and fhirclient (the SMART on FHIR Python client,
synchronous: run in a thread so the server keeps serving) each create referrals from three trusts,
read one back, search with ``_count``, count with ``_summary=count`` / ``_count=0``, page through the
results by their ``next`` links, ``save()`` an update the way the library does it by default (no
If-Match, the body's meta.versionId), read the history, and get a 304 for a copy that is current.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fhir_referrals import FHIR, PATIENTS, SEED_PATIENTS, referral
from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle
from fhirclient.models.servicerequest import ServiceRequest
from fhirpy import AsyncFHIRClient
from helpers import on_free_port, serve_hub

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.settings import Settings

TRUSTS = ("RBL", "RJR", "REM")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The hub's base URL is the server's own address, so the links it writes lead back to it."""
    return on_free_port(settings)


@pytest.fixture
async def base(intake: IntakeService) -> AsyncIterator[str]:
    """The FHIR base of the hub served by uvicorn at that address for the duration of the test."""
    async with serve_hub(intake) as url:
        yield f"{url}/fhir"


@pytest.fixture
async def patients(http: httpx.AsyncClient, intake: IntakeService) -> dict[str, str]:
    """The three trusts' patients (colliding hospital numbers), stored and mapped: family -> Patient id."""
    entries = [{"resource": p, "request": {"method": "POST", "url": "Patient"}} for p in SEED_PATIENTS]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert (await http.post("/fhir", json=bundle, headers=FHIR)).status_code == 202
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)
    ids = {}
    for family, number in PATIENTS.items():
        found = (await http.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{number}"})).json()
        [entry] = found["entry"]
        ids[family] = entry["resource"]["id"]
    return ids


async def test_fhirpy_async_client(base: str, patients: dict[str, str]) -> None:
    client = AsyncFHIRClient(base)
    holloway = await client.resources("Patient").search(family="holloway").get()
    assert holloway.id == patients["HOLLOWAY"]
    created = []
    for trust in TRUSTS:  # the same local referral number at three trusts: three referrals
        resource = client.resource("ServiceRequest", **referral("000123", trust, subject=holloway.to_reference()))
        await resource.save()
        assert resource.id and resource["meta"]["versionId"] == "1"
        assert resource["subject"]["reference"] == f"Patient/{holloway.id}"
        created.append(resource)
    assert await client.resources("ServiceRequest").search(patient=holloway.id).count() == 3
    assert len({r.id for r in created}) == 3

    read = await client.reference("ServiceRequest", created[1].id).to_resource()
    assert read["identifier"] == created[1]["identifier"] and read["note"] == created[1]["note"]

    active = client.resources("ServiceRequest").search(status="active")
    page = await active.limit(2).fetch()
    assert len(page) == 2
    assert await active.count() == 3  # _count=0 (with fhirpy's _totalMethod=count)
    everything = await active.limit(2).fetch_all()  # follows the next link
    assert sorted(r.id for r in everything) == sorted(r.id for r in created)
    trimmed = await active.elements("priority").limit(3).fetch()
    assert {r["priority"] for r in trimmed} == {"urgent"} and all("note" not in r for r in trimmed)
    assert all(t["code"] == "SUBSETTED" for r in trimmed for t in r["meta"]["tag"])

    # save() as the library does it: PUT the resource read, no If-Match, its meta.versionId in the body.
    read["priority"] = "asap"
    read["note"] = [*read["note"], {"text": "reg spoke to family, pt now unable to weight bear"}]
    await read.save()
    assert read["meta"]["versionId"] == "2" and read["priority"] == "asap"
    stale = copy.deepcopy(created[1])
    stale["priority"] = "routine"
    with pytest.raises(Exception, match="version 2"):  # fhirpy raises its OperationOutcome for the 412
        await stale.save()
    assert (await client.reference("ServiceRequest", read.id).to_resource())["priority"] == "asap"

    history = await client.execute(f"ServiceRequest/{read.id}/_history", method="get", params={"_count": 1})
    assert history["total"] == 2 and history["entry"][0]["response"]["etag"] == 'W/"2"'
    following = next(link["url"] for link in history["link"] if link["relation"] == "next")
    older = await client.execute(following, method="get")
    assert older["entry"][0]["resource"]["meta"]["versionId"] == "1"

    # refresh() sends If-None-Match with the versionId: a 304 leaves the local copy as it is.
    read["note"] = [{"text": "local edit, not saved"}]
    await read.refresh()
    assert read["note"] == [{"text": "local edit, not saved"}]
    created[0]["meta"]["versionId"] = "0"  # out of date: the refresh brings the stored one
    await created[0].refresh()
    assert created[0]["meta"]["versionId"] == "1" and created[0]["note"] == referral("000123", "RBL")["note"]


def drive_fhirclient(base: str, patient_id: str) -> dict[str, Any]:
    """The fhirclient scenario, synchronous (run in a thread); returns what the test asserts on."""
    smart = smart_client.FHIRClient(settings={"app_id": "mscc-tests", "api_base": base})
    server = smart.server
    try:
        statement = server.capabilityStatement  # the CapabilityStatement parses with the client's R4 models
        ids = []
        for trust in TRUSTS:
            subject = {"reference": f"Patient/{patient_id}"}
            answer = ServiceRequest(referral("000456", trust, "OKONKWO", subject=subject)).create(server)
            ids.append(answer["id"])
        first = ServiceRequest.read(ids[0], server)
        search = ServiceRequest.where(struct={"status": "active", "_count": "2"})
        pages = list(search.perform_iter(server))
        found = [r.id for r in search.perform_resources_iter(server)]
        counted = Bundle.read_from("ServiceRequest?_summary=count", server)
        first.priority = "stat"
        saved = first.update(server)  # PUT, no If-Match: the body's meta.versionId
        history = Bundle.read_from(f"ServiceRequest/{ids[0]}/_history", server)
        etag = server._get(f"ServiceRequest/{ids[0]}").headers["ETag"]
        not_modified = server._get(f"ServiceRequest/{ids[0]}", headers={"If-None-Match": etag})
        return {
            "statement": statement,
            "ids": ids,
            "first": first,
            "pages": pages,
            "found": found,
            "total": counted.total,
            "counted_entries": counted.entry,
            "saved": saved,
            "history": history,
            "etag": etag,
            "not_modified": (not_modified.status_code, not_modified.content),
        }
    finally:
        server.session.close()


async def test_fhirclient_smart_client(base: str, patients: dict[str, str]) -> None:
    seen = await asyncio.to_thread(drive_fhirclient, base, patients["OKONKWO"])
    assert seen["statement"].fhirVersion == "4.0.1"
    assert len(set(seen["ids"])) == 3
    first = seen["first"]
    assert first.identifier[0].value == "000456" and first.subject.reference == f"Patient/{patients['OKONKWO']}"
    pages = seen["pages"]
    assert [len(page.entry) for page in pages] == [2, 1] and pages[0].total == 3
    assert sorted(seen["found"]) == sorted(seen["ids"])
    assert seen["total"] == 3 and seen["counted_entries"] is None
    assert seen["saved"]["meta"]["versionId"] == "2" and seen["saved"]["priority"] == "stat"
    history = seen["history"]
    assert history.total == 2 and [e.resource.meta.versionId for e in history.entry] == ["2", "1"]
    assert seen["etag"] == 'W/"2"'
    assert seen["not_modified"] == (304, b"")
