"""The audit trail's FHIR API, for the MSCC team only: thin handlers over ``shared/audit_log.py``.

    GET /fhir/AuditEvent?entity=Patient/123&agent=RBL&date=ge2026-01-01&_count=20&_offset=0
    GET /fhir/AuditEvent/{id}

Who may: a caller of the MSCC team (its ODS code is the hub's own, ``MSCC_RECEIVING_FACILITY``) with a
scope that reads AuditEvents (``system/AuditEvent.rs``, ``system/*.rs`` or ``system/*.read``). A trust's
caller is refused with 403 whatever its scopes: the audit trail names every trust's patients. Each
refusal is itself audited, with its reason. Searches are newest first, paged by ``_count`` (1-100,
default 20) and ``_offset`` with next/previous links; unknown parameters are a 400.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request

from shared import audit_log
from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.http_server import CallerDep, FhirResponse
from shared.scopes import needed
from shared.settings import Settings

from .audit import note_bundle, note_resources
from .deps import Api

router = APIRouter(prefix="/fhir/AuditEvent", tags=["FHIR"])


def authorise(request: Request, caller: Caller, settings: Settings, permission: str) -> None:
    """``FhirError`` 403 unless ``caller`` is the MSCC team with a scope to read (``r``) or search (``s``)
    AuditEvents; the reason is kept for the refused attempt's own AuditEvent."""
    reason = None
    if caller.ods_code.upper() != settings.receiving_facility.upper():
        reason = (
            f"the audit trail is open to the MSCC team ({settings.receiving_facility}) only, "
            f"not to organisation {caller.ods_code}"
        )
    elif not caller.allows(needed("AuditEvent", permission)):
        reason = f"client {caller.client_id} has no scope to {'read' if permission == 'r' else 'search'} AuditEvents"
    if reason:
        request.state.auth_failure = reason
        raise FhirError(403, "forbidden", reason)


@router.get("", summary="Search the audit trail (MSCC team only)", response_class=FhirResponse)
async def search(request: Request, caller: CallerDep, api: Api) -> FhirResponse:
    authorise(request, caller, api.settings, "s")
    params = list(request.query_params.multi_items())
    query = audit_log.parse_params(params)
    total, docs = await audit_log.search(api.store.audit, query)
    base = f"{api.settings.base_url}/fhir/AuditEvent"

    def link(relation: str, offset: int) -> dict[str, str]:
        kept = [(k, v) for k, v in params if k not in ("_count", "_offset", "_format", "_pretty")]
        return {
            "relation": relation,
            "url": f"{base}?{urlencode([*kept, ('_count', str(query.count)), ('_offset', str(offset))])}",
        }

    links = [link("self", query.offset)]
    if query.offset + query.count < total:
        links.append(link("next", query.offset + query.count))
    if query.offset > 0:
        links.append(link("previous", max(0, query.offset - query.count)))
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if docs:
        bundle["entry"] = [
            {"fullUrl": f"{base}/{doc['_id']}", "resource": doc["resource"], "search": {"mode": "match"}}
            for doc in docs
        ]
    note_bundle(request, bundle)
    return FhirResponse(bundle)


@router.get("/{event_id}", summary="Read one AuditEvent (MSCC team only)", response_class=FhirResponse)
async def read(event_id: str, request: Request, caller: CallerDep, api: Api) -> FhirResponse:
    authorise(request, caller, api.settings, "r")
    doc = await api.store.audit.find_one({"_id": event_id})
    if doc is None:
        raise FhirError(404, "not-found", f"AuditEvent/{event_id} is not known")
    note_resources(request, [doc["resource"]])
    return FhirResponse(doc["resource"])
