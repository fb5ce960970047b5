"""The MLLP channel's HL7v2 message: one RRI^I12 (v2.5) per event, built with hl7apy; and its ACK.

RRI^I12 ("return referral information") is the reply a referral's receiver sends its referrer, so an
engine that sent REF^I12 referrals already routes it back to the referring team. One message per event::

    MSH  MSH-3/4 the hub; MSH-5/6 from the channel's "MSH-5:"/"MSH-6:" headers (MSH-6 defaults to the
         trust's ODS code); MSH-9 RRI^I12^RRI_I12; MSH-10 derived from the event id, the same on every
         attempt (receivers de-duplicate on it); MSH-11 P; MSH-12 2.5; original acknowledgement mode
    RF1  for a ServiceRequest: RF1-1 the status (HL7 table 0283 where a code fits: active A, draft and
         on-hold P; the FHIR request-status always as the alternate code, system 99FHIR), RF1-11 the
         referral's FHIR id
    PID  PID-3 the NHS number (^^^NHS^NH) and the receiving trust's own local numbers (with their
         authority), PID-5 name, PID-7 birth date, PID-8 sex: from the patient the referral points
         at. With no such identifier the message is not built (``NoPatientIdentifier``): the delivery
         is dead-lettered with the reason rather than an RRI no engine can file being sent
    NTE  what happened: the topic, the kind of change (step, SLA event), the focus, the event id/number

The ACK decides the delivery: AA (or CA) delivered; AE (CE) refused for its content, dead-lettered at
once with the receiver's reason, since sending the same message again cannot succeed; AR (CR) and
unreadable replies are retried; no reply is retried.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.core import Message

from shared.er7 import parse_message
from shared.fhir import Resource
from shared.ids import LOCAL_SYSTEM_PATTERN
from shared.nhs import NHS_NUMBER_SYSTEM, is_valid_nhs_number

from ..model import Delivery, Mllp, utc

VERSION = "2.5"
LOCAL_PREFIX = LOCAL_SYSTEM_PATTERN.split("{", 1)[0]  # "urn:mscc:id:", the hub's local identifier systems
_TABLE_0283 = {"active": ("A", "Accepted"), "draft": ("P", "Pending"), "on-hold": ("P", "Pending")}
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_TOPIC_TEXT = {
    "referral-status": "Referral status",
    "hna-completed": "Holistic Needs Assessment completed",
    "sla": "SLA event",
    "data-quality": "Referral data quality",
}


def control_id(event_id: str) -> str:
    """MSH-10 for an event: 20 characters (the v2.5 limit), stable for the event id."""
    return hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:20].upper()


def _ts(value: datetime) -> str:
    return utc(value).strftime("%Y%m%d%H%M%S+0000")


class NoPatientIdentifier(ValueError):
    """The event's patient has no identifier the receiving engine could file the message under (no
    valid NHS number, no local number the receiving trust assigned). The message is not sent: the
    delivery is dead-lettered with this reason, for an operator to fix the patient and redeliver."""


@dataclass(frozen=True)
class PatientNumber:
    """One PID-3 repetition: CX.1 value, CX.4 assigning authority (HD.1), CX.5 identifier type."""

    value: str
    authority: str
    type_code: str


def _owner(ident: Resource) -> tuple[str, str] | None:
    """(organisation, authority) of a local identifier: the assigner's ODS code, else what the hub's
    local system names ("urn:mscc:id:RBL:PAS" -> RBL, PAS; "urn:mscc:id:RBL" -> RBL, RBL)."""
    system = str(ident.get("system") or "")
    rest = system.removeprefix(LOCAL_PREFIX) if system.startswith(LOCAL_PREFIX) else ""
    org, _, authority = rest.partition(":")
    assigner = ((ident.get("assigner") or {}).get("identifier") or {}).get("value")
    if assigner:
        return str(assigner), authority or org or str(assigner)
    return (org, authority or org) if org else None


def _type_code(ident: Resource) -> str:
    for coding in (ident.get("type") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return "PI"


def patient_numbers(patient: Resource | None, focus: Resource | None, trust: str) -> list[PatientNumber]:
    """PID-3 for the referral's patient: the NHS number (``^^^NHS^NH``), then the local numbers that
    ``trust`` (the receiving facility) assigned, with their authority. Another trust's local numbers
    are never sent: the receiver could file them against its own patient with the same number. Without
    a stored Patient, a subject given by NHS number still gives PID-3."""
    found: list[PatientNumber] = []
    idents = list((patient or {}).get("identifier") or [])
    subject = (focus or {}).get("subject")
    if patient is None and isinstance(subject, dict) and isinstance(subject.get("identifier"), dict):
        idents.append(subject["identifier"])
    for ident in idents:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        value = str(ident["value"])
        if ident.get("system") == NHS_NUMBER_SYSTEM:
            if is_valid_nhs_number(value):
                found.append(PatientNumber(value, "NHS", "NH"))
            continue
        owner = _owner(ident)
        if owner and trust and owner[0].upper() == trust.upper():
            found.append(PatientNumber(value, owner[1], _type_code(ident)))
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda n: n.type_code != "NH")


def _notes(delivery: Delivery, topic: str, focus: Resource | None) -> list[str]:
    event = delivery.event
    lines = [f"{_TOPIC_TEXT.get(topic, topic)}: {event.kind} {event.focus.reference}"]
    if focus is not None and focus.get("status"):
        lines.append(f"Status: {focus['status']}")
    if event.detail.get("step"):
        previous = event.detail.get("previous_step")
        lines.append(f"Pathway step: {event.detail['step']}" + (f" (was {previous})" if previous else ""))
    if event.detail.get("sla_event"):
        lines.append(f"SLA: {event.detail['sla_event']}")
    if event.detail.get("pickup"):
        lines.append(f"Received out of hours: the MSCC team will pick it up at {event.detail['pickup']}")
    if focus is not None and focus.get("resourceType") == "Task":
        # The data-quality Task: each item the referral still lacks, in words the referrer can act on.
        for entry in focus.get("input") or []:
            if isinstance(entry, dict):
                lines.append(f"Missing: {(entry.get('type') or {}).get('text', '')}: {entry.get('valueString', '')}")
    lines.append(f"Event {delivery.event_number}, id {delivery.event_id}, at {_ts(event.occurred_at)}")
    return lines


def _pid(message: Any, patient: Resource | None, focus: Resource | None, trust: str) -> None:
    numbers = patient_numbers(patient, focus, trust)
    if not numbers:
        subject = (focus or {}).get("subject") or {}
        raise NoPatientIdentifier(
            f"PID-3 cannot be filled: patient {subject.get('reference') or '(none)'} has no valid NHS number "
            f"and no local number assigned by {trust or 'the receiving trust'}; the RRI^I12 was not sent"
        )
    pid = message.pid
    pid.pid_1 = "1"
    for number in numbers:
        cx = pid.add_field("PID_3")
        cx.cx_1 = number.value
        cx.cx_4.hd_1 = number.authority
        cx.cx_5 = number.type_code
    if patient is None:
        return
    names = patient.get("name") or []
    if names and isinstance(names[0], dict):
        if names[0].get("family"):
            pid.pid_5.xpn_1.fn_1 = str(names[0]["family"])
        given = names[0].get("given") or []
        if given:
            pid.pid_5.xpn_2 = str(given[0])
    if isinstance(patient.get("birthDate"), str):
        pid.pid_7.ts_1 = patient["birthDate"].replace("-", "")
    if patient.get("gender") in _SEX:
        pid.pid_8 = _SEX[patient["gender"]]


def build_message(
    delivery: Delivery,
    channel: Mllp,
    *,
    topic: str,
    focus: Resource | None,
    patient: Resource | None,
    sending_application: str,
    sending_facility: str,
    now: datetime,
) -> bytes:
    """The event's RRI^I12 as ER7 bytes (segments ended by CR), ready for MLLP framing."""
    message = Message("RRI_I12", version=VERSION)
    msh = message.msh
    msh.msh_3.hd_1 = sending_application
    msh.msh_4.hd_1 = sending_facility
    if channel.receiving_application:
        msh.msh_5.hd_1 = channel.receiving_application
    if channel.receiving_facility:
        msh.msh_6.hd_1 = channel.receiving_facility
    msh.msh_7.ts_1 = _ts(now)
    msh.msh_9 = "RRI^I12^RRI_I12"
    msh.msh_10 = control_id(delivery.event_id)
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    if focus is not None and focus.get("resourceType") == "ServiceRequest":
        status = str(focus.get("status", ""))
        rf1 = message.rf1
        if status in _TABLE_0283:
            rf1.rf1_1.ce_1, rf1.rf1_1.ce_2 = _TABLE_0283[status]
            rf1.rf1_1.ce_3 = "HL70283"
        if status:
            rf1.rf1_1.ce_4 = status
            rf1.rf1_1.ce_5 = status
            rf1.rf1_1.ce_6 = "99FHIR"
        rf1.rf1_11.ei_1 = str(focus.get("id", ""))
    _pid(message, patient, focus, channel.receiving_facility)
    for number, text in enumerate(_notes(delivery, topic, focus), start=1):
        nte = message.add_segment("NTE")
        nte.nte_1 = str(number)
        nte.nte_3 = text
    er7: str = message.to_er7()
    return (er7.replace("\n", "\r").rstrip("\r") + "\r").encode("utf-8")


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3, else ERR-8, else the ERR code's text


def read_ack(reply: bytes) -> Ack:
    """MSA-1/2/3 (and an ERR reason) of a reply; ``ValueError`` if it is not an HL7v2 ACK."""
    parsed = parse_message(reply.decode("utf-8", errors="replace"))
    msa = parsed.first("MSA")
    if msa is None:
        raise ValueError("the reply has no MSA segment")
    text = msa.value(3)
    err = parsed.first("ERR")
    if not text and err is not None:
        text = err.value(8) or err.value(3, 2) or err.value(1, 4)
    return Ack(msa.value(1), msa.value(2), text)
