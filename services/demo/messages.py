"""What the demo sends: fictional referrals, an ADT update, an HNA and Subscriptions, new for every run.

Everyone here is made up. The NHS numbers are test numbers that pass the modulus 11 check (the hub
files them as NHS numbers), and the telephone numbers are Ofcom's drama numbers. Every identifier a
sender chooses (MSH-10, the referral numbers, the visit number, the HNA's message id) carries the run's
id, so a second run on the same database is new traffic rather than a resend of the first run's.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
HNA_QUESTIONNAIRE = "urn:mscc:Questionnaire:hna"


@dataclass(frozen=True)
class Trust:
    """A referring trust of the demo: its ODS code, a name to print, and its fictional patient."""

    ods: str
    name: str
    nhs_number: str
    patient: str


# Wirral sends HL7v2 from its PAS over MLLP; Chester's EPR speaks FHIR.
WIRRAL = Trust("RBL", "Wirral (Arrowe Park)", "9449305552", "Alex DEMOPATIENT")
CHESTER = Trust("RJR", "Countess of Chester", "9434765919", "Chidi OKONKWO")
TRUSTS = (WIRRAL, CHESTER)


@dataclass(frozen=True)
class Run:
    """One run of the demo: when it started and the id its identifiers carry."""

    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    token: str = field(default_factory=lambda: secrets.token_hex(2).upper())

    @property
    def id(self) -> str:
        return f"{self.started:%y%m%d%H%M%S}{self.token}"

    @property
    def stamp(self) -> str:
        """An HL7v2 timestamp (seconds) of the run's start, in UTC."""
        return f"{self.started:%Y%m%d%H%M%S}+0000"

    def control_id(self, what: str) -> str:
        """MSH-10 of this run's message ``what`` (DEMO...: a reader of the log sees what it is)."""
        return f"DEMO{what}{self.id}"

    @property
    def wirral_referral(self) -> str:
        return f"RBL-MSCC-{self.id}"

    @property
    def chester_referral(self) -> str:
        return f"RJR-ICE-{self.id}"


def hl7(*segments: str) -> bytes:
    return "\r".join(segments).encode("utf-8") + b"\r"


def _pid(phone: str, address: str) -> str:
    return (
        f"PID|1||{WIRRAL.nhs_number}^^^NHS^NH~RBL123456^^^RBL^MR||DEMOPATIENT^ALEX^^^MX||19580214|U|||"
        f"{address}||{phone}"
    )


def wirral_referral(run: Run) -> bytes:
    """A REF^I12 as Wirral's PAS sends it at night: enhanced acknowledgement (commit ACK always), the
    referring doctor (PRD, with a bleep number) and where the patient is (PV1), and the free text of a
    tired on-call doctor. It lacks nothing of the MSCC minimum data."""
    return hl7(
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{run.stamp}||REF^I12^REF_I12|{run.control_id('REF')}|P|2.5"
        "|||AL|NE||UNICODE UTF-8",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{run.wirral_referral}|"
        f"{run.stamp}|||?MSCC - new thoracic back pain, legs weak",
        "PRD|RP|SHAH^PRIYA^^^DR|Arrowe Park Hospital^^Wirral^^CH49 5PE|^^^RBL|01632 960555 bleep 4321^WPN^PH",
        _pid("01632 960001", "1 Example Road^^Wirral^^CH49 0AA"),
        f"PV1|1|E|AMU^BAY 3^BED 12^RBL||||||||||||||||RBL-V{run.id}",
        "DG1|1||C50.9^Malignant neoplasm of breast^I10|||F",
        "DG1|2||C79.5^Secondary malignant neoplasm of bone^I10|||W",
        "OBX|1|ST|NEURO^Neurological status||B/L leg weakness since this am, power 4/5 LL, "
        "pins + needles to umbilicus. no sphincter probs||||||F",
        "NTE|1||pt c/o thoracic back pain 3/52 worse lying flat, now legs 'heavy'. known ca breast w bony mets. "
        "dex 16mg given 0230. pls advise re MRI - on call F2, bleep 4321",
    )


def wirral_transfer(run: Run) -> bytes:
    """An ADT^A08 (update patient information) for the same patient: moved from AMU to ward 21, and a
    new contact number from the PAS. Original acknowledgement mode (AA)."""
    return hl7(
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{run.stamp}||ADT^A08^ADT_A01|{run.control_id('ADT')}|P|2.5",
        f"EVN|A08|{run.stamp}",
        _pid("01632 960002", "1 Example Road^^Wirral^^CH49 0AA"),
        f"PV1|1|I|WARD 21^BAY 2^BED 4^RBL|||AMU^BAY 3^BED 12^RBL|||||||||||||RBL-V{run.id}",
    )


NOT_HL7 = b"PID|1||123\r"  # a fragment with no MSH: refused (AR) and kept with the reason


def chester_referral(run: Run) -> Json:
    """A FHIR referral from Chester's EPR, in its own name (requester: a contained PractitionerRole of
    RJR with a telephone number). It names a primary cancer but says nothing readable about neurology:
    the data-quality gap the hub asks the trust to fill."""
    return {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "referrer",
                "organization": {"identifier": {"system": ODS_SYSTEM, "value": CHESTER.ods}},
                "telecom": [{"system": "phone", "value": "01632 960777", "use": "work"}],
            }
        ],
        "identifier": [{"system": "https://fhir.rjr.example.nhs.uk/Id/ice-referral", "value": run.chester_referral}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "code": {"text": "MSCC assessment"},
        "reasonCode": [{"text": "Ca prostate w bony mets"}],
        "subject": {
            "identifier": {"system": NHS_SYSTEM, "value": CHESTER.nhs_number},
            "display": "OKONKWO, Chidi",
        },
        "requester": {"reference": "#referrer"},
        "authoredOn": run.started.isoformat(timespec="seconds"),
        "note": [{"text": "lumbar pain worse lying flat x1wk, not examined yet - on call reg to see. ?MSCC"}],
    }


def hna_message(run: Run) -> Json:
    """A Holistic Needs Assessment completed with Wirral's patient, as a message Bundle: pain, getting
    around and worry scored high, so the support plan gets three activities."""
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": HNA_QUESTIONNAIRE,
        "status": "completed",
        "subject": {"identifier": {"system": NHS_SYSTEM, "value": WIRRAL.nhs_number}},
        "authored": run.started.isoformat(timespec="seconds"),
        "item": [
            {
                "linkId": "physical",
                "item": [
                    {"linkId": "physical.pain", "answer": [{"valueInteger": 8}]},
                    {"linkId": "physical.mobility", "answer": [{"valueInteger": 7}]},
                    {"linkId": "physical.sleep", "answer": [{"valueInteger": 3}]},
                ],
            },
            {"linkId": "emotional", "item": [{"linkId": "emotional.worry", "answer": [{"valueInteger": 6}]}]},
        ],
    }
    header = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid4()),
        "eventUri": "urn:mscc:event:hna-completed",
        "source": {"endpoint": "urn:trust:rbl:cancer-support"},
    }
    return {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in (header, response)],
    }


DEMO_REASON = "MSCC demo: "  # the demo's own subscriptions, removed when a new run starts


def subscription(base_url: str, trust: Trust, topic: str, endpoint: str, filters: list[str]) -> Json:
    """A rest-hook Subscription of ``trust`` to one of the hub's topics, full resources in each
    notification (fictional data: a real trust chooses what its endpoint may receive)."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"{DEMO_REASON}{trust.name} Acute Oncology, {topic}",
        "criteria": f"{base_url.rstrip('/')}/fhir/SubscriptionTopic/{topic}",
        "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": "full-resource"}]},
        },
    }


def transition(step: str, note: str) -> Json:
    """``$transition`` Parameters: a step of the pathway, by the MSCC coordinator, now."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "step", "valueCode": step},
            {"name": "note", "valueString": note},
            {"name": "who", "valueReference": {"display": "MSCC coordinator (demo)"}},
        ],
    }
