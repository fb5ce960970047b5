"""The FHIR API (R4, JSON): create ServiceRequest, post Bundles, read/vread, $validate, metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from shared.fhir import FHIR_JSON, FhirError, check_content_type, issue, operation_outcome, parse_json
from shared.fhir import validate as validate_resource

from .capability import SUPPORTED_TYPES, capability_statement
from .deps import CallerDep, Intake, Peer
from .fhir_intake import FhirReply

router = APIRouter(prefix="/fhir", tags=["FHIR"])


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def respond(reply: FhirReply) -> FhirResponse:
    return FhirResponse(reply.body, status_code=reply.status, headers=reply.headers)


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
) -> FhirResponse:
    body = await request.body()
    _check_size(body, intake.settings.mllp_max_message_bytes)
    reply = await intake.fhir.create(
        "ServiceRequest", body, request.headers.get("content-type"), if_none_exist, caller, peer
    )
    return respond(reply)


@router.post("", summary="Post a transaction, batch or message Bundle", response_class=FhirResponse)
async def post_bundle(request: Request, intake: Intake, caller: CallerDep, peer: Peer) -> FhirResponse:
    body = await request.body()
    _check_size(body, intake.settings.mllp_max_message_bytes)
    return respond(await intake.fhir.post_bundle(body, request.headers.get("content-type"), caller, peer))


@router.post("/{resource_type}/$validate", summary="Validate a resource", response_class=FhirResponse)
async def validate_operation(resource_type: str, request: Request) -> FhirResponse:
    _known_type(resource_type)
    check_content_type(request.headers.get("content-type"))
    data: dict[str, Any] = parse_json(await request.body())
    if data.get("resourceType") == "Parameters":
        resource = next((p.get("resource") for p in data.get("parameter", []) if p.get("name") == "resource"), None)
        if not isinstance(resource, dict):
            raise FhirError(400, "required", "Parameters must carry a 'resource' parameter")
        data = resource
    validate_resource(data, resource_type)
    return FhirResponse(operation_outcome([issue("information", "informational", f"{resource_type} is valid FHIR R4")]))


@router.get("/{resource_type}/{resource_id}", summary="Read a resource", response_class=FhirResponse)
async def read(resource_type: str, resource_id: str, intake: Intake) -> FhirResponse:
    _known_type(resource_type)
    return respond(await intake.fhir.read(resource_type, resource_id))


@router.get(
    "/{resource_type}/{resource_id}/_history/{version}", summary="Read one version", response_class=FhirResponse
)
async def vread(resource_type: str, resource_id: str, version: str, intake: Intake) -> FhirResponse:
    _known_type(resource_type)
    return respond(await intake.fhir.read(resource_type, resource_id, version))


def _check_size(body: bytes, limit: int) -> None:
    if len(body) > limit:
        raise FhirError(413, "too-costly", f"body of {len(body)} bytes exceeds the limit of {limit} bytes")


def _version() -> str:
    try:
        return version("mscc-hub")
    except PackageNotFoundError:
        return "0+unknown"


def outcome_response(error: FhirError) -> FhirResponse:
    return FhirResponse(error.outcome(), status_code=error.status)
