"""The CapabilityStatement: exactly what this server supports, no more.

``rest.security`` says how to call it: SMART on FHIR (the ``restful-security-service`` code
``SMART-on-FHIR``), with the token endpoint in the ``oauth-uris`` extension (as SMART App Launch 1.0
places it; ``/.well-known/smart-configuration`` says the same and more), so a client that reads only
the CapabilityStatement finds where to get a token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from services.notifier.capability import subscription_capability
from shared.audit_log import capability as audit_capability
from shared.fhir import FHIR_JSON, FHIR_VERSION, Resource, validate
from shared.search import search_params

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/"
VALIDATE = {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}
MESSAGE_TRANSPORT = "http://terminology.hl7.org/CodeSystem/message-transport"
READ_ONLY_TYPES = (
    "Patient",
    "Encounter",
    "CarePlan",
    "QuestionnaireResponse",
    "DiagnosticReport",
    "Questionnaire",
    "Task",
    "Condition",
    "AllergyIntolerance",
    "Procedure",
)
# Types that also take update (PUT, If-Match required; services/pathway/updates.py).
UPDATE_TYPES = ("ServiceRequest", "Encounter", "CarePlan")
UPDATE_DOC = (
    "update (PUT) is made against the version read: If-Match with its ETag or, without If-Match, the body's "
    "meta.versionId (428 with neither, 412 when stale); it never creates; Prefer: return=minimal | "
    "representation | OperationOutcome is honoured; the MSCC pathway owns the statuses it implies "
    "(docs/pathway.md)"
)
# What every FHIR interaction of this server takes (shared/fhir_conventions.py, shared/subsetting.py).
CONVENTIONS_DOC = (
    "Every interaction answers JSON: _format=json, application/fhir+json or application/json is accepted, "
    "and _format=xml, or an Accept header that admits no JSON, is answered 406; _pretty=true indents the "
    "answer. HEAD is "
    'served for read, vread, search, history and metadata. read and vread answer ETag W/"n" and '
    "Last-Modified, and 304 to If-None-Match (the current ETag) or If-Modified-Since. read, vread and search "
    "take _summary (true, text, data, false; count on search) and _elements (top-level elements; mandatory "
    "ones kept), and mark a trimmed resource with the SUBSETTED tag in meta.tag. Search: _count (0-100, 0 = "
    "the total alone), _offset, _total and _totalMethod (the total is always exact); results page with "
    "next/previous links. History (instance and type) is newest first, paged with _count, _offset and "
    "next/previous links, and takes _since. An unknown parameter is a 400 OperationOutcome."
)
TRANSITION = {
    "name": "transition",
    "definition": "urn:mscc:fhir:OperationDefinition:ServiceRequest-transition",
    "documentation": "POST ServiceRequest/{id}/$transition with Parameters step (valueCode), time (valueDateTime), "
    "note, who: moves an MSCC referral along its pathway (docs/pathway.md)",
}
SUPPORTED_TYPES = ("ServiceRequest", *READ_ONLY_TYPES)
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def rest_security(base_url: str) -> Resource:
    """``CapabilityStatement.rest.security``: SMART on FHIR backend services, and where the token is got."""
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": f"{base_url}/oauth2/token"}]}],
        "cors": False,
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                "text": "OAuth 2.0 client credentials (SMART Backend Services)",
            }
        ],
        "description": "Every interaction but metadata needs an access token (Authorization: Bearer) from "
        f"{base_url}/oauth2/token: the client credentials grant, the client authenticated by a JWT assertion "
        "signed with its registered key (private_key_jwt) or by its secret. Tokens carry SMART system "
        "scopes (system/ServiceRequest.rs, system/*.read, ...) and the client's ODS code: a referring trust "
        "sees and changes only its own referrals and patients, the MSCC team everything. Discovery: "
        f"{base_url}/.well-known/smart-configuration.",
    }


def hub_version() -> str:
    """The hub's version, as the CapabilityStatement and the OpenAPI document give it."""
    try:
        return version("mscc-hub")
    except PackageNotFoundError:
        return "0+unknown"


def capability_statement(base_url: str, software_version: str) -> Resource:
    read_only = [
        {"code": "read"},
        {"code": "vread"},
        {"code": "search-type"},
        {"code": "history-instance"},
        {"code": "history-type"},
    ]
    resources = [
        {
            "type": "ServiceRequest",
            "profile": f"{UK_CORE}UKCore-ServiceRequest",
            "interaction": [{"code": "create"}, {"code": "update"}, *read_only],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": False,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "searchParam": search_params("ServiceRequest"),
            "documentation": "create honours If-None-Exist: identifier=system|value (within the caller's "
            "organisation); the resource id is derived from the first business identifier, scoped by the "
            "caller's ODS code unless national, so a repeated create is idempotent; an invalid NHS number is "
            "kept under urn:mscc:id:invalid-nhs-number with a warning (Prefer: return=OperationOutcome); "
            f"{UPDATE_DOC}",
            "operation": [VALIDATE, TRANSITION],
        },
        *[
            {
                "type": t,
                "profile": f"{UK_CORE}UKCore-{t}",
                "interaction": [{"code": "update"}, *read_only] if t in UPDATE_TYPES else read_only,
                "versioning": "versioned-update" if t in UPDATE_TYPES else "versioned",
                "readHistory": True,
                "conditionalRead": "full-support",
                **({"updateCreate": False, "documentation": UPDATE_DOC} if t in UPDATE_TYPES else {}),
                "searchParam": search_params(t),
                **({"operation": [VALIDATE]} if t != "Questionnaire" else {}),
            }
            for t in READ_ONLY_TYPES
        ],
        subscription_capability(base_url),
        audit_capability(),
    ]
    statement: Resource = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "MSCC integration hub",
        "kind": "instance",
        "software": {"name": "mscc-hub", "version": software_version},
        "implementation": {"description": "MSCC integration hub FHIR API", "url": f"{base_url}/fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "application/json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": rest_security(base_url),
                "documentation": "POST /fhir takes transaction, batch and message Bundles: they are stored, "
                "acknowledged (202 with a receipt Bundle, or a message response) and processed "
                "asynchronously. Only create (POST Type) and update by id (PUT Type/id) of the stored types "
                "are carried out; any other entry (DELETE, GET, conditional, operation, other type, a code "
                "outside its required value set) refuses a whole transaction (400, each entry named) and is "
                "answered with its own error status in a batch. $validate and create check required "
                f"bindings. XML is not supported. {CONVENTIONS_DOC}",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
        "messaging": [
            {
                "endpoint": [
                    {"protocol": {"system": MESSAGE_TRANSPORT, "code": "http"}, "address": f"{base_url}/fhir"}
                ],
                "documentation": "message Bundles (first entry a MessageHeader) are accepted by POST to the base; "
                "the response is a message Bundle with MessageHeader.response.code ok once it is stored, "
                "naming in response.details (an OperationOutcome) any entry of a type the hub does not store; "
                "a message with nothing the hub stores is refused (422). "
                "A repeated MessageHeader.id is answered with the first response.",
            }
        ],
    }
    return validate(statement, "CapabilityStatement")
