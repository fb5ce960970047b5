"""Demo traffic for ``mscc run --demo``: a fictional MSCC referral sent the ways trusts send them.

The patient, people and numbers are made up (9449305552 is a check-digit-valid test NHS number).
Each step logs what the hub answered, so a newcomer sees intake work end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import aiohttp

from shared.mllp import MllpClient
from shared.settings import Settings

log = logging.getLogger("mscc.demo")


def demo_referral(control_id: str, now: datetime) -> bytes:
    stamp = now.strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{stamp}||REF^I12^REF_I12|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
        "RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|RBL-2026-0001|"
        f"{stamp[:8]}|||Suspected MSCC: new back pain and leg weakness",
        "PRD|RP|ONCOLOGY^ACUTE^TEAM|Arrowe Park Hospital^^Wirral^^CH49 5PE|^^^RBL",
        "PID|1||9449305552^^^NHS^NH~RBL123456^^^RBL^MR||DEMOPATIENT^ALEX^^^MX||19580214|U|||"
        "1 Example Road^^Wirral^^CH49 0AA||0151 000 0000",
        "DG1|1||C79.5^Secondary malignant neoplasm of bone and bone marrow^I10|||W",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness since this morning||||||F",
        "NTE|1||Neurology: bilateral leg weakness since this morning; dexamethasone 16 mg given",
    ]
    return "\r".join(segments).encode("utf-8") + b"\r"


def demo_service_request(now: datetime | None = None) -> dict[str, object]:
    """A FHIR referral; each run's has its own number (a second run on the same data is a new referral,
    not different content under the first run's number, which the hub would refuse with a 409)."""
    now = now or datetime.now(UTC)
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://fhir.rbl.nhs.uk/Id/referral", "value": f"RBL-{now:%Y%m%d%H%M%S}"}],
        "status": "active",
        "intent": "order",
        "priority": "stat",
        "code": {"text": "Metastatic spinal cord compression referral"},
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"}},
        "requester": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RBL"}},
        "authoredOn": now.isoformat(timespec="seconds"),
    }


async def send_demo_traffic(settings: Settings, mllp_port: int) -> None:
    now = datetime.now(UTC)
    host = "127.0.0.1" if settings.mllp_host in ("0.0.0.0", "::") else settings.mllp_host
    client = await MllpClient.connect(host, mllp_port)
    try:
        control_id = f"DEMO{now.strftime('%H%M%S')}"
        message = demo_referral(control_id, now)
        for label, payload in (
            ("REF^I12 referral", message),
            ("the same referral again (duplicate)", message),
            ("a message with no MSH", b"PID|1||123\r"),
        ):
            ack = await client.send(payload)
            log.info("demo: sent %s over MLLP; ACK: %s", label, ack.decode("utf-8", "replace").replace("\r", " | "))
    finally:
        await client.close()
    base = f"http://127.0.0.1:{settings.http_port}"
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/fhir+json"}
        async with session.post(
            f"{base}/fhir/ServiceRequest", data=json.dumps(demo_service_request(now)), headers=headers
        ) as response:
            log.info(
                "demo: POST /fhir/ServiceRequest -> %s, Location %s", response.status, response.headers.get("Location")
            )
        await _show_mapped(session, base)


async def _show_mapped(session: aiohttp.ClientSession, base: str) -> None:
    """Wait (up to 15 s) for the mapper, then show what the referral became through the FHIR API."""
    for _ in range(60):
        async with session.get(f"{base}/fhir/CarePlan", params={"status": "active"}) as response:
            plans = await response.json()
        if plans.get("total", 0) >= 2:
            break
        await asyncio.sleep(0.25)
    for entry in plans.get("entry", []):
        plan = entry["resource"]
        mri = plan["activity"][0]["detail"]
        due = (mri.get("scheduledPeriod") or {}).get("end", "(no start time)")
        log.info(
            "demo: mapped: CarePlan/%s for %s: %s due %s",
            plan["id"],
            plan["subject"].get("reference")
            or "the patient with NHS number " + plan["subject"].get("identifier", {}).get("value", "?"),
            mri["description"],
            due,
        )
