"""The FHIR API (R4, JSON): create ServiceRequest, post Bundles, read/vread, $validate, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from shared.auth import Caller
from shared.fhir import FHIR_JSON, FhirError, Resource, check_content_type, issue, operation_outcome, parse_json
from shared.fhir import validate as validate_resource

from .capability import SUPPORTED_TYPES, capability_statement
from .conventions import not_modified, prefer_return, version_of_etag
from .deps import CallerDep, Intake, Peer, read_body
from .fhir_intake import FhirReply
from .service import IntakeService
from .subsetting import apply_subset, parse_subset

router = APIRouter(prefix="/fhir", tags=["FHIR"])


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def respond(reply: FhirReply) -> FhirResponse:
    return FhirResponse(reply.body, status_code=reply.status, headers=reply.headers)


def respond_as_preferred(reply: FhirReply, prefer: str | None) -> Response:
    """A create or update answer as ``Prefer: return=`` asks: ``minimal``, the status and headers with no
    body; otherwise the body built (the resource, or the OperationOutcome ``return=OperationOutcome``
    asks for)."""
    if prefer_return(prefer) == "minimal":
        return Response(status_code=reply.status, headers=reply.headers)
    return respond(reply)


def _known_type(resource_type: str) -> None:
    if resource_type not in SUPPORTED_TYPES:
        raise FhirError(
            404,
            "not-supported",
            f"resource type {resource_type!r} is not supported here; supported: {', '.join(SUPPORTED_TYPES)}",
        )


@router.get("/metadata", summary="CapabilityStatement", response_class=FhirResponse)
async def metadata(intake: Intake) -> FhirResponse:
    return FhirResponse(capability_statement(intake.settings.base_url, _version()))


@router.post(
    "/ServiceRequest", summary="Create a ServiceRequest (referral)", status_code=201, response_class=FhirResponse
)
async def create_service_request(
    request: Request,
    intake: Intake,
    caller: CallerDep,
    peer: Peer,
    if_none_exist: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description="return=minimal | representation | OperationOutcome")] = None,
) -> Response:
    header = {"interaction": "create", "resource_type": "ServiceRequest"}
    body = await _read_body(request, intake, header, caller, peer)
    reply = await intake.fhir.create(
        "ServiceRequest",
        body,
        request.headers.get("content-type"),
        if_none_exist,
        caller,
        peer,
        prefer=prefer,
    )
    return respond_as_preferred(reply, prefer)


@router.post("", summary="Post a transaction, batch or message Bundle", response_class=FhirResponse)
async def post_bundle(request: Request, intake: Intake, caller: CallerDep, peer: Peer) -> FhirResponse:
    body = await _read_body(request, intake, {"interaction": "bundle"}, caller, peer)
    return respond(await intake.fhir.post_bundle(body, request.headers.get("content-type"), caller, peer))


@router.post("/{resource_type}/$validate", summary="Validate a resource", response_class=FhirResponse)
async def validate_operation(resource_type: str, request: Request, intake: Intake) -> FhirResponse:
    """Validate without storing anything: 200 information, or the errors (400, 413, 415); structure and
    the codes of required bindings (contained resources included) are checked, as create checks them."""
    _known_type(resource_type)
    check_content_type(request.headers.get("content-type"))
    limit = intake.settings.mllp_max_message_bytes
    body, size = await read_body(request, limit)
    if size > limit:
        raise FhirError(413, "too-costly", f"body of {size} bytes exceeds the limit of {limit} bytes")
    data = parse_json(body)
    if data.get("resourceType") == "Parameters":
        data = _resource_parameter(data)
    validate_resource(data, resource_type, bindings=True)
    return FhirResponse(operation_outcome([issue("information", "informational", f"{resource_type} is valid FHIR R4")]))


@router.get("/{resource_type}", summary="Search (searchset Bundle, paged)", response_class=FhirResponse)
async def search(resource_type: str, request: Request, intake: Intake) -> FhirResponse:
    _known_type(resource_type)
    return FhirResponse(await intake.reads.search(resource_type, list(request.query_params.multi_items())))


@router.get("/{resource_type}/_search", summary="Search", response_class=FhirResponse, operation_id="search_get")
@router.post(
    "/{resource_type}/_search", summary="Search by form POST", response_class=FhirResponse, operation_id="search_post"
)
async def search_post(resource_type: str, request: Request, intake: Intake) -> FhirResponse:
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        body, size = await read_body(request, 64 * 1024)
        if size > 64 * 1024:
            raise FhirError(413, "too-costly", "a search form over 64 KiB is not accepted")
        params += parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return FhirResponse(await intake.reads.search(resource_type, params))


@router.get("/{resource_type}/_history", summary="History of every resource of a type", response_class=FhirResponse)
async def type_history(resource_type: str, request: Request, intake: Intake) -> FhirResponse:
    """Newest first, paged (``_count``, ``_offset``, next/previous links), from ``_since`` on."""
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    return FhirResponse(await intake.reads.history(resource_type, None, params))


@router.get("/{resource_type}/{resource_id}/_history", summary="History of a resource", response_class=FhirResponse)
async def history(resource_type: str, resource_id: str, request: Request, intake: Intake) -> FhirResponse:
    """Newest first, paged (``_count``, ``_offset``, next/previous links), from ``_since`` on."""
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    return FhirResponse(await intake.reads.history(resource_type, resource_id, params))


@router.get("/{resource_type}/{resource_id}", summary="Read a resource", response_class=FhirResponse)
async def read(resource_type: str, resource_id: str, request: Request, intake: Intake) -> Response:
    """200 with ETag and Last-Modified; 304 when If-None-Match / If-Modified-Since say the client's copy
    is current; ``_summary`` / ``_elements`` trim the answer (tagged SUBSETTED)."""
    _known_type(resource_type)
    return conditional(request, await intake.fhir.read(resource_type, resource_id))


@router.get(
    "/{resource_type}/{resource_id}/_history/{version}", summary="Read one version", response_class=FhirResponse
)
async def vread(resource_type: str, resource_id: str, version: str, request: Request, intake: Intake) -> Response:
    """As read, for one version."""
    _known_type(resource_type)
    return conditional(request, await intake.fhir.read(resource_type, resource_id, version))


def conditional(request: Request, reply: FhirReply) -> Response:
    """The answer to a read: 304 (no body, the validators repeated) when the client's copy is current,
    else the resource trimmed by ``_summary`` / ``_elements``. ``FhirError`` 400 for another query
    parameter (a read takes only those and ``_format`` / ``_pretty``) or ``_summary=count``."""
    params = list(request.query_params.multi_items())
    unknown = sorted({name for name, _ in params if name not in ("_summary", "_elements")})
    if unknown:
        raise FhirError(
            400, "not-supported", f"read takes _summary, _elements, _format, _pretty; not {', '.join(unknown)}"
        )
    subset = parse_subset(params)
    if subset.count_only:
        raise FhirError(400, "invalid", "_summary=count applies to search, not read")
    version = int(version_of_etag(reply.headers["ETag"]))
    changed = parsedate_to_datetime(reply.headers["Last-Modified"])
    if not_modified(version, changed, request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
        kept = {k: v for k, v in reply.headers.items() if k in ("ETag", "Last-Modified")}
        return Response(status_code=304, headers=kept)
    return FhirResponse(apply_subset(reply.body, subset), status_code=reply.status, headers=reply.headers)


def _resource_parameter(parameters: Resource) -> Resource:
    """The ``resource`` parameter of a $validate Parameters body; ``FhirError`` 400 if there is none."""
    items = parameters.get("parameter")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and item.get("name") == "resource" and isinstance(item.get("resource"), dict):
                resource: Resource = item["resource"]
                return resource
    raise FhirError(
        400, "required", "Parameters must carry a 'resource' parameter", expression=["Parameters.parameter"]
    )


async def _read_body(
    request: Request, intake: IntakeService, header: dict[str, Any], caller: Caller, peer: str
) -> bytes:
    """The request body; ``FhirError`` 413 if it is over the limit (its first bytes are kept as rejected)."""
    limit = intake.settings.mllp_max_message_bytes
    head, size = await read_body(request, limit)
    if size > limit:
        raise await intake.fhir.refuse_oversize(head[:limit], size, limit, caller, peer, header)
    return head


def _version() -> str:
    try:
        return version("mscc-hub")
    except PackageNotFoundError:
        return "0+unknown"


def outcome_response(error: FhirError, headers: Mapping[str, str] | None = None) -> FhirResponse:
    """The OperationOutcome answer for ``error`` (503s ask the client to retry after a few seconds)."""
    extra = dict(headers or {})
    if error.status == 503:
        extra.setdefault("Retry-After", "5")
    return FhirResponse(error.outcome(), status_code=error.status, headers=extra)
