"""FHIR AuditEvents for every access to the hub's patient data, after IHE Basic Audit Log Patterns (BALP).

One event per HTTP request to ``/fhir``, ``/hl7v2``, ``/admin`` or the dashboard (``/ui``), built from
what the request was (``classify``: the FHIR interaction, its action, the resource type and id in the
path) and what came of it (``AuditFacts``: the status, the caller, the resources touched, the reason of a
refusal):

    type       ``rest`` (audit-event-type) for a FHIR interaction; DICOM ``110110 Patient Record`` for an
               HL7v2 message or an operator route, which are not FHIR interactions
    subtype    the FHIR interaction (``http://hl7.org/fhir/restful-interaction``)
    action     C create, R read/vread/history, U update (and ``$transition``), D delete, E search and
               other operations
    outcome    0 success (1xx-3xx), 4 minor failure (4xx: refused, not found, invalid), 8 serious failure
               (5xx); the reason of a failure in ``outcomeDesc``
    agent      the client (its ODS code as ``who.identifier``, its client id as ``altId``, its network
               address; ``requestor`` true) as DICOM Source Role, and the hub as Destination Role
    source     the hub (``observer``), at the receiving facility (``site``)
    entity     each resource touched (``what``; a Patient with role 1 Patient, anything else role 4 Domain
               Resource), at most ``MAX_ENTITIES`` (the rest counted); a search's query, base64, as role
               24 Query; a stored message record by its identifier

Nothing else from the request goes in: no names, dates of birth or free text beyond what the query
itself says, so an AuditEvent carries no more patient data than the request line did. Everything here is
pure (no I/O, no clock): ``shared/audit_log.py`` stores and searches the events.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .auth import Caller

Resource = dict[str, Any]
Document = dict[str, Any]
Channel = Literal["fhir", "hl7v2", "admin"]

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
HUB_SYSTEM = "urn:mscc:application"
RECORD_SYSTEM = "urn:mscc:message-record"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."

REST = {"system": AUDIT_TYPE, "code": "rest", "display": "Restful Operation"}
PATIENT_RECORD = {"system": DICOM, "code": "110110", "display": "Patient Record"}
SOURCE_ROLE = {"system": DICOM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE = {"system": DICOM, "code": "110152", "display": "Destination Role ID"}
PERSON = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
PATIENT_ROLE = {"system": ENTITY_ROLE, "code": "1", "display": "Patient"}
DOMAIN_RESOURCE = {"system": ENTITY_ROLE, "code": "4", "display": "Domain Resource"}
QUERY_ROLE = {"system": ENTITY_ROLE, "code": "24", "display": "Query"}
APPLICATION_SERVER = {"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}

MAX_ENTITIES = 100
# Refused attempts: the reason a client is given (who may not, what is not there) is kept in outcomeDesc.
REFUSED = frozenset({401, 403, 404, 405, 406, 429})
# BALP profiles for a successful FHIR interaction (the Patient variant when a patient is named); operations,
# Bundles and the HL7v2 and operator routes follow no BALP profile.
PROFILES = {
    "create": "Create",
    "read": "Read",
    "vread": "Read",
    "history-instance": "Read",
    "update": "Update",
    "patch": "Update",
    "delete": "Delete",
    "search-type": "Query",
    "search-system": "Query",
    "history-type": "Query",
}
# Instance operations that change what they act on (the rest only read or check).
CHANGING_OPERATIONS = frozenset({"$transition"})


@dataclass(frozen=True)
class Interaction:
    """What a request asks for: the FHIR interaction code, its action, and the resource in its path."""

    channel: Channel
    code: str
    action: str
    resource_type: str | None = None
    resource_id: str | None = None
    operation: str | None = None

    @property
    def is_search(self) -> bool:
        return self.code in ("search-type", "history-type") or (self.channel == "admin" and self.action == "E")

    def path_reference(self) -> str | None:
        """``Type/id`` of the resource the path names (read, vread, update, instance history, operation)."""
        if self.channel == "fhir" and self.resource_type and self.resource_id:
            return f"{self.resource_type}/{self.resource_id}"
        if self.channel == "admin" and self.resource_id:  # a stored message record (operator routes, /ui)
            return f"{RECORD_SYSTEM}|{self.resource_id}"
        return None


def classify(method: str, path: str) -> Interaction | None:
    """The interaction a request to ``path`` asks for; None for paths that are not audited (health
    checks, documentation, the public ``/fhir/metadata``). HEAD is a GET without the body."""
    method = "GET" if method == "HEAD" else method.upper()
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    if parts[0] == "hl7v2":
        return Interaction("hl7v2", "create", "C")
    if parts[0] == "admin":
        if method == "GET":
            return Interaction("admin", "search-type", "E")
        return Interaction("admin", "update", "U", resource_id=parts[2] if len(parts) > 2 else None)
    if parts[0] == "ui":  # the dashboard shows patient data (masked) and acts on records, as /admin does
        if parts[1:2] in (["static"], ["login"], ["logout"]):
            return None
        record = parts[2] if parts[1:2] == ["messages"] and len(parts) > 2 else None
        if method == "GET":
            return (
                Interaction("admin", "read", "R", resource_id=record)
                if record
                else Interaction("admin", "search-type", "E")
            )
        return Interaction("admin", "update", "U", resource_id=record)
    if parts[0] != "fhir" or parts[1:2] in (["metadata"], [".well-known"]):
        return None  # public: the server's capabilities and SMART configuration name no patient
    return _fhir_interaction(method, parts[1:])


def _fhir_interaction(method: str, parts: list[str]) -> Interaction:
    if not parts:
        return (
            Interaction("fhir", "transaction", "E") if method == "POST" else Interaction("fhir", "search-system", "E")
        )
    rtype = parts[0]
    if len(parts) == 1:
        if method == "POST":
            return Interaction("fhir", "create", "C", rtype)
        return Interaction("fhir", "search-type", "E", rtype)
    second = parts[1]
    if len(parts) == 2:
        if second == "_search":
            return Interaction("fhir", "search-type", "E", rtype)
        if second == "_history":
            return Interaction("fhir", "history-type", "R", rtype)
        if second.startswith("$"):
            return Interaction("fhir", "operation", "E", rtype, operation=second)
        code, action = {"PUT": ("update", "U"), "PATCH": ("patch", "U"), "DELETE": ("delete", "D")}.get(
            method, ("read", "R")
        )
        return Interaction("fhir", code, action, rtype, second)
    third = parts[2]
    if third == "_history":
        if len(parts) >= 4:
            return Interaction("fhir", "vread", "R", rtype, second)
        return Interaction("fhir", "history-instance", "R", rtype, second)
    if third.startswith("$"):
        action = "U" if third in CHANGING_OPERATIONS else "E"
        return Interaction("fhir", "operation", action, rtype, second, operation=third)
    return Interaction("fhir", "read", "R", rtype, second)


def outcome_code(status: int) -> str:
    """0 success, 4 minor failure (the request was refused or wrong), 8 serious failure (the server's)."""
    if status >= 500:
        return "8"
    return "4" if status >= 400 else "0"


@dataclass(frozen=True)
class Hub:
    """The hub as an agent and as the observer: its application name, its site (ODS code), its URL."""

    application: str
    facility: str
    base_url: str


@dataclass
class AuditFacts:
    """Everything known about one request once it is answered. ``entities`` are ``Type/id`` references
    (or ``urn:mscc:message-record|id`` for a stored message), in the order found, duplicates allowed."""

    interaction: Interaction
    recorded: datetime
    status: int
    caller: Caller | None
    peer: str | None
    method: str
    path: str
    query: str = ""
    reason: str | None = None
    entities: list[str] = field(default_factory=list)
    results: int | None = None
    outcome: str | None = None  # when the status does not say it (an HL7v2 ACK AR over HTTP 200)


def patient_references(resource: Resource) -> list[str]:
    """The ``Patient/id`` references a resource names as its subject (its own, for a Patient)."""
    found = []
    if resource.get("resourceType") == "Patient" and resource.get("id"):
        found.append(f"Patient/{resource['id']}")
    for key in ("subject", "patient", "for", "beneficiary"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            found.append(str(ref["reference"]))
    return found


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _entity(ref: str) -> Resource:
    if ref.startswith(RECORD_SYSTEM + "|"):
        record = ref.split("|", 1)[1]
        return {
            "what": {"identifier": {"system": RECORD_SYSTEM, "value": record}},
            "type": SYSTEM_OBJECT,
            "role": DOMAIN_RESOURCE,
            "description": "stored message record",
        }
    if ref.startswith("Patient/"):
        return {"what": {"reference": ref}, "type": PERSON, "role": PATIENT_ROLE}
    return {"what": {"reference": ref}, "type": SYSTEM_OBJECT, "role": DOMAIN_RESOURCE}


def _client_agent(caller: Caller | None, peer: str | None) -> Resource:
    agent: Resource = {"type": {"coding": [SOURCE_ROLE]}, "requestor": True}
    if caller is not None:
        agent["who"] = {"identifier": {"system": ODS_SYSTEM, "value": caller.ods_code}, "display": caller.client_id}
        agent["altId"] = caller.client_id
    else:
        agent["who"] = {"display": "unidentified caller"}
    if peer:
        agent["network"] = {"address": peer, "type": "2"}
    return agent


def _hub_agent(hub: Hub) -> Resource:
    return {
        "type": {"coding": [DESTINATION_ROLE]},
        "who": {"identifier": {"system": HUB_SYSTEM, "value": hub.application}, "display": "MSCC integration hub"},
        "requestor": False,
        "network": {"address": hub.base_url, "type": "5"},
    }


def _instant(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_event(facts: AuditFacts, hub: Hub, event_id: str | None = None) -> Resource:
    """The AuditEvent (FHIR R4) for one answered request."""
    what = facts.interaction
    refs = _unique([r for r in [what.path_reference(), *facts.entities] if r])
    kept, omitted = refs[:MAX_ENTITIES], max(0, len(refs) - MAX_ENTITIES)
    entities = [_entity(r) for r in kept]
    if what.is_search:
        line = f"{facts.method} {facts.path}" + (f"?{facts.query}" if facts.query else "")
        query: Resource = {
            "type": SYSTEM_OBJECT,
            "role": QUERY_ROLE,
            "query": base64.b64encode(line.encode("utf-8")).decode("ascii"),
        }
        details = [("results", facts.results), ("entities-omitted", omitted or None)]
        query["detail"] = [{"type": k, "valueString": str(v)} for k, v in details if v is not None] or None
        entities.insert(0, {k: v for k, v in query.items() if v is not None})
    elif omitted:
        entities[-1]["detail"] = [{"type": "entities-omitted", "valueString": str(omitted)}]
    outcome = facts.outcome or outcome_code(facts.status)
    patient = any(r.startswith("Patient/") for r in kept)
    event: Resource = {
        "resourceType": "AuditEvent",
        "id": event_id or str(uuid.uuid4()),
        "meta": {"lastUpdated": _instant(facts.recorded)},
        "type": REST if what.channel == "fhir" else PATIENT_RECORD,
        "subtype": [{"system": INTERACTION, "code": what.code}],
        "action": what.action,
        "recorded": _instant(facts.recorded),
        "outcome": outcome,
        "agent": [_client_agent(facts.caller, facts.peer), _hub_agent(hub)],
        "source": {
            "site": hub.facility,
            "observer": {"identifier": {"system": HUB_SYSTEM, "value": hub.application}, "display": hub.application},
            "type": [APPLICATION_SERVER],
        },
    }
    if outcome != "0":
        event["outcomeDesc"] = (facts.reason or f"HTTP {facts.status}")[:500]
    elif what.channel == "fhir" and what.code in PROFILES:
        event["meta"]["profile"] = [BALP + ("Patient" if patient else "") + PROFILES[what.code]]
    if entities:
        event["entity"] = entities
    return event


def search_keys(facts: AuditFacts, event: Resource) -> tuple[list[str], list[str]]:
    """What the audit search matches an event by: its entities (``Type/id`` and the bare id, a message
    record's id) and its agent (the client id and the ODS code)."""
    entity_keys: list[str] = []
    for entity in event.get("entity", []):
        what = entity.get("what", {})
        if "reference" in what:
            entity_keys += [what["reference"], what["reference"].split("/", 1)[-1]]
        elif "identifier" in what:
            entity_keys.append(what["identifier"]["value"])
    agent_keys = [facts.caller.client_id, facts.caller.ods_code.upper()] if facts.caller else []
    return _unique(entity_keys), _unique(agent_keys)


def to_doc(facts: AuditFacts, hub: Hub) -> Document:
    """The stored document: the AuditEvent, with the fields the audit search and the retention index use."""
    event = build_event(facts, hub)
    entity_keys, agent_keys = search_keys(facts, event)
    return {
        "_id": event["id"],
        "recorded": facts.recorded,
        "entity_keys": entity_keys,
        "agent_keys": agent_keys,
        "outcome": event["outcome"],
        "resource": event,
    }
