"""The pathway's FHIR API: POST /fhir/ServiceRequest/{id}/$transition, and PUT (update with If-Match) on
/fhir/ServiceRequest/{id}, /fhir/Encounter/{id} and /fhir/CarePlan/{id} (one route per type, so PUT on
other types stays with their own routers).

Registered before the generic /fhir routes. Thin: parsing and rules live in ``services/pathway``, which
stays free of any HTTP framework (this router is the API's, calling the pathway's functions). Every
refusal is an OperationOutcome, and the refused body is kept as a rejected message (by intake, which
keeps every inbound body).

Who may do what (``authorisation.py``): the MSCC team moves referrals; a referring trust may cancel its
own referral and update its content; another trust's resource is 404, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from shared.auth import Caller
from shared.fhir import FhirError, check_content_type, issue, operation_outcome, parse_json, validate
from shared.fhir_conventions import prefer_return
from shared.http_server import CallerDep, FhirResponse, Peer, outcome_response, read_body
from shared.nhs import check_nhs_numbers
from shared.store import Document
from shared.visibility import Visibility

from ..pathway.service import parse_transition
from ..pathway.updates import UPDATABLE, expected_version, parse_if_match
from .authorisation import Who, check_move, check_update, not_known, visible
from .deps import Api, ApiServices

router = APIRouter(prefix="/fhir", tags=["FHIR", "MSCC pathway"])


def _resource_response(doc: Document, base_url: str) -> FhirResponse:
    headers = {
        "ETag": f'W/"{doc["version"]}"',
        "Last-Modified": doc["last_updated"].astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Content-Location": f"{base_url}/fhir/{doc['type']}/{doc['id']}/_history/{doc['version']}",
    }
    return FhirResponse(doc["resource"], status_code=200, headers=headers)


async def _body(request: Request, api: ApiServices) -> bytes:
    """The body; ``FhirError`` 415 or 413 (raised before anything is kept: there is nothing to keep)."""
    check_content_type(request.headers.get("content-type"))
    limit = api.settings.mllp_max_message_bytes
    body, size = await read_body(request, limit)
    if size > limit:
        raise FhirError(413, "too-costly", f"body of {size} bytes exceeds the limit of {limit} bytes")
    return body


@router.post(
    "/ServiceRequest/{referral_id}/$transition",
    summary="Move an MSCC referral to a pathway step",
    response_class=FhirResponse,
)
async def transition(
    referral_id: str,
    request: Request,
    api: Api,
    caller: CallerDep,
    who: Who,
    peer: Peer,
    if_match: Annotated[str | None, Header()] = None,
) -> FhirResponse:
    """Parameters step / time / note / who -> the updated referral (200, ETag). Refusals: 400, 403 (a
    trust's move other than cancelling its own referral), 404 (no such referral, or another trust's),
    409 (the OperationOutcome names the allowed steps), 412 (If-Match), 422."""
    body = await _body(request, api)
    header = {"interaction": "operation", "operation": "$transition", "resource_type": "ServiceRequest"}
    try:
        parameters = validate(parse_json(body), "Parameters")
        ask = parse_transition(parameters)
        expected = parse_if_match(if_match) if if_match is not None else None
        if not who.everything and await visible(api.store, who, "ServiceRequest", referral_id) is None:
            raise not_known("ServiceRequest", referral_id)
        check_move(who, referral_id, ask.step)
        result = await api.pathway.transition(referral_id, ask, expected, body, caller, peer)
    except FhirError as error:
        await api.intake.fhir.keep_rejected(body, error, caller, peer, {**header, "id": referral_id})
        raise
    return _resource_response(result.request, api.settings.base_url)


async def _update(
    resource_type: str,
    resource_id: str,
    request: Request,
    api: ApiServices,
    caller: Caller,
    who: Visibility,
    peer: str,
    if_match: str | None,
    prefer: str | None = None,
) -> Response:
    """A new version of a ServiceRequest, Encounter or CarePlan, made against the version ``If-Match``
    names or, without it, the body's ``meta.versionId``. Refusals: 400, 405 (an id that does not exist:
    update never creates), 409, 412 (stale), 422, 428 (neither If-Match nor meta.versionId). ``Prefer:
    return=minimal`` answers no body, ``return=OperationOutcome`` what was done (and any NHS number
    warning). For a trust, another trust's resource, or one that does not exist, is 404 (the same
    answer: existence is not revealed); updating the MSCC team's Encounter or CarePlan, or moving the
    referral other than to cancel it, is 403."""
    stored = await visible(api.store, who, resource_type, resource_id)
    if stored is None and who.everything:
        # FHIR: 405 when the resource did not exist and the server does not take client-defined ids.
        error = FhirError(405, "not-supported", f"{resource_type}/{resource_id} does not exist: update never creates")
        return outcome_response(error, {"Allow": "GET"})
    body = await _body(request, api)
    header = {"interaction": "update", "resource_type": resource_type, "id": resource_id}
    try:
        if stored is None:
            raise not_known(resource_type, resource_id)
        data = parse_json(body)
        check_update(who, stored, data)
        expected = expected_version(if_match, data)
        resource = validate(data, resource_type, bindings=True)
        # As on create: an NHS number failing the check is never stored as one (the answer shows it demoted).
        resource, invalid = check_nhs_numbers(resource)
        result = await api.pathway.update(resource, resource_type, resource_id, expected, body, caller, peer)
    except FhirError as error:
        await api.intake.fhir.keep_rejected(body, error, caller, peer, header)
        raise
    answer = _resource_response(result.current, api.settings.base_url)
    choice = prefer_return(prefer)
    if choice == "minimal":
        return Response(status_code=200, headers=_validators(answer))
    if choice == "OperationOutcome":
        done = f"updated to version {result.current['version']}" if result.changed else "unchanged: same content"
        what = issue("information", "informational", f"{resource_type}/{resource_id} {done}")
        outcome = operation_outcome([*(finding.issue() for finding in invalid), what])
        return FhirResponse(outcome, status_code=200, headers=_validators(answer))
    return answer


def _validators(answer: Response) -> dict[str, str]:
    return {k: answer.headers[k] for k in ("ETag", "Last-Modified", "Content-Location")}


def _update_route(resource_type: str) -> Callable[..., Awaitable[Response]]:
    async def update(
        resource_id: str,
        request: Request,
        api: Api,
        caller: CallerDep,
        who: Who,
        peer: Peer,
        if_match: Annotated[str | None, Header()] = None,
        prefer: Annotated[str | None, Header(description="return=minimal | representation | OperationOutcome")] = None,
    ) -> Response:
        return await _update(resource_type, resource_id, request, api, caller, who, peer, if_match, prefer)

    return update


# One route per type, not /{type}/{id}: other routers own PUT on their own types (e.g. Subscription).
for _type in UPDATABLE:
    router.add_api_route(
        f"/{_type}/{{resource_id}}",
        _update_route(_type),
        methods=["PUT"],
        summary=f"Update a {_type} (If-Match, or the body's meta.versionId, required)",
        response_class=FhirResponse,
        operation_id=f"update_{_type}",
    )
