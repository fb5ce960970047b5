"""The read side of the FHIR REST API (R4, JSON): metadata, read and vread (conditional: 304), search
(GET, or POST ``_search`` with a form), instance and type history, and ``$validate``.

Thin handlers over ``FhirReads`` and ``shared.search``. Every refusal is a ``FhirError`` the app answers
as an OperationOutcome: 404 for a type the server does not hold, 400 for a parameter it does not take.
Each read sees what the caller may see (``authorisation.Who``): another trust's resource is 404.
Create and Bundles are intake's routes (``services/intake/routes_fhir.py``).
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response

from shared.fhir import FhirError, Resource, check_content_type, issue, operation_outcome, parse_json
from shared.fhir import validate as validate_resource
from shared.fhir_conventions import not_modified, version_of_etag
from shared.http_server import FhirResponse, read_body
from shared.store import Document
from shared.subsetting import apply_subset, parse_subset

from .audit import note_bundle, note_resources
from .authorisation import Who
from .capability import SUPPORTED_TYPES, capability_statement, hub_version
from .deps import Api

router = APIRouter(prefix="/fhir", tags=["FHIR"])


def _known_type(resource_type: str) -> None:
    if resource_type not in SUPPORTED_TYPES:
        raise FhirError(
            404,
            "not-supported",
            f"resource type {resource_type!r} is not supported here; supported: {', '.join(SUPPORTED_TYPES)}",
        )


# The CapabilityStatement, served at /fhir/metadata and /metadata (app.py registers both; no docstring,
# which would change the OpenAPI description).
async def metadata(api: Api) -> FhirResponse:
    return FhirResponse(capability_statement(api.settings.base_url, hub_version()))


@router.post("/{resource_type}/$validate", summary="Validate a resource", response_class=FhirResponse)
async def validate_operation(resource_type: str, request: Request, api: Api) -> FhirResponse:
    """Validate without storing anything: 200 information, or the errors (400, 413, 415); structure and
    the codes of required bindings (contained resources included) are checked, as create checks them."""
    _known_type(resource_type)
    check_content_type(request.headers.get("content-type"))
    limit = api.settings.mllp_max_message_bytes
    body, size = await read_body(request, limit)
    if size > limit:
        raise FhirError(413, "too-costly", f"body of {size} bytes exceeds the limit of {limit} bytes")
    data = parse_json(body)
    if data.get("resourceType") == "Parameters":
        data = _resource_parameter(data)
    validate_resource(data, resource_type, bindings=True)
    return FhirResponse(operation_outcome([issue("information", "informational", f"{resource_type} is valid FHIR R4")]))


@router.get("/{resource_type}", summary="Search (searchset Bundle, paged)", response_class=FhirResponse)
async def search(resource_type: str, request: Request, api: Api, who: Who) -> FhirResponse:
    _known_type(resource_type)
    bundle = await api.reads.search(resource_type, list(request.query_params.multi_items()), who)
    note_bundle(request, bundle)  # the audit trail names what was returned
    return FhirResponse(bundle)


@router.get("/{resource_type}/_search", summary="Search", response_class=FhirResponse, operation_id="search_get")
@router.post(
    "/{resource_type}/_search", summary="Search by form POST", response_class=FhirResponse, operation_id="search_post"
)
async def search_post(resource_type: str, request: Request, api: Api, who: Who) -> FhirResponse:
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        body, size = await read_body(request, 64 * 1024)
        if size > 64 * 1024:
            raise FhirError(413, "too-costly", "a search form over 64 KiB is not accepted")
        params += parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    bundle = await api.reads.search(resource_type, params, who)
    note_bundle(request, bundle, params)
    return FhirResponse(bundle)


@router.get("/{resource_type}/_history", summary="History of every resource of a type", response_class=FhirResponse)
async def type_history(resource_type: str, request: Request, api: Api, who: Who) -> FhirResponse:
    """Newest first, paged (``_count``, ``_offset``, next/previous links), from ``_since`` on."""
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    bundle = await api.reads.history(resource_type, None, params, who)
    note_bundle(request, bundle)
    return FhirResponse(bundle)


@router.get("/{resource_type}/{resource_id}/_history", summary="History of a resource", response_class=FhirResponse)
async def history(resource_type: str, resource_id: str, request: Request, api: Api, who: Who) -> FhirResponse:
    """Newest first, paged (``_count``, ``_offset``, next/previous links), from ``_since`` on."""
    _known_type(resource_type)
    params = list(request.query_params.multi_items())
    bundle = await api.reads.history(resource_type, resource_id, params, who)
    note_bundle(request, bundle)
    return FhirResponse(bundle)


@router.get("/{resource_type}/{resource_id}", summary="Read a resource", response_class=FhirResponse)
async def read(resource_type: str, resource_id: str, request: Request, api: Api, who: Who) -> Response:
    """200 with ETag and Last-Modified; 304 when If-None-Match / If-Modified-Since say the client's copy
    is current; ``_summary`` / ``_elements`` trim the answer (tagged SUBSETTED)."""
    _known_type(resource_type)
    doc = await api.reads.read(resource_type, resource_id, who=who)
    note_resources(request, [doc["resource"]])  # the audit trail names its patient
    return conditional(request, doc)


@router.get(
    "/{resource_type}/{resource_id}/_history/{version}", summary="Read one version", response_class=FhirResponse
)
async def vread(resource_type: str, resource_id: str, version: str, request: Request, api: Api, who: Who) -> Response:
    """As read, for one version."""
    _known_type(resource_type)
    doc = await api.reads.read(resource_type, resource_id, version, who)
    note_resources(request, [doc["resource"]])
    return conditional(request, doc)


def validators(doc: Document) -> dict[str, str]:
    """The ETag and Last-Modified of a stored version (HTTP dates have whole seconds)."""
    changed = doc["last_updated"].astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    version = doc["version"]
    return {"ETag": f'W/"{version}"', "Last-Modified": changed}


def conditional(request: Request, doc: Document) -> Response:
    """The answer to a read of the stored version ``doc``: 304 (no body, the validators repeated) when the
    client's copy is current, else the resource trimmed by ``_summary`` / ``_elements``. ``FhirError`` 400
    for another query parameter (a read takes only those and ``_format`` / ``_pretty``) or
    ``_summary=count``."""
    params = list(request.query_params.multi_items())
    unknown = sorted({name for name, _ in params if name not in ("_summary", "_elements")})
    if unknown:
        raise FhirError(
            400, "not-supported", f"read takes _summary, _elements, _format, _pretty; not {', '.join(unknown)}"
        )
    subset = parse_subset(params)
    if subset.count_only:
        raise FhirError(400, "invalid", "_summary=count applies to search, not read")
    headers = validators(doc)
    version = int(version_of_etag(headers["ETag"]))
    changed = parsedate_to_datetime(headers["Last-Modified"])
    if not_modified(version, changed, request.headers.get("if-none-match"), request.headers.get("if-modified-since")):
        return Response(status_code=304, headers=headers)
    return FhirResponse(apply_subset(doc["resource"], subset), status_code=200, headers=headers)


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
