"""Intake's FHIR routes (R4, JSON): create a ServiceRequest, post a transaction, batch or message Bundle.

Thin handlers over ``FhirIntake``: the body is kept as a message record before anything is answered.
Refusals are ``FhirError`` (the app answers them as OperationOutcomes); a body over
``MSCC_MLLP_MAX_MESSAGE_BYTES`` is a 413, its first bytes kept as a rejected record. The read side of the
FHIR API (read, search, history, ``$validate``, metadata) is in ``services/api/``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from shared.auth import Caller
from shared.fhir_conventions import prefer_return
from shared.http_server import CallerDep, FhirResponse, Peer, read_body

from .deps import Intake
from .fhir_reply import FhirReply
from .service import IntakeService

router = APIRouter(prefix="/fhir", tags=["FHIR"])


def respond(reply: FhirReply) -> FhirResponse:
    return FhirResponse(reply.body, status_code=reply.status, headers=reply.headers)


def respond_as_preferred(reply: FhirReply, prefer: str | None) -> Response:
    """A create answer as ``Prefer: return=`` asks: ``minimal``, the status and headers with no body;
    otherwise the body built (the resource, or the OperationOutcome ``return=OperationOutcome`` asks
    for)."""
    if prefer_return(prefer) == "minimal":
        return Response(status_code=reply.status, headers=reply.headers)
    return respond(reply)


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


async def _read_body(
    request: Request, intake: IntakeService, header: dict[str, Any], caller: Caller, peer: str
) -> bytes:
    """The request body; ``FhirError`` 413 if it is over the limit (its first bytes are kept as rejected)."""
    limit = intake.settings.mllp_max_message_bytes
    head, size = await read_body(request, limit, intake.budget)
    if size > limit:
        raise await intake.fhir.refuse_oversize(head[:limit], size, limit, caller, peer, header)
    return head
