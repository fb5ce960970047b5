"""HL7v2 over HTTP: ``POST /hl7v2`` with an ER7 body answers with the ACK (HL7 over HTTP conventions).

Application errors (AE/AR) are still HTTP 200 with the ACK; transport failures (wrong content type,
body too large, database down) are 4xx/5xx with a plain-text reason, never an HL7 payload.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from shared.http_server import CallerDep, Peer, read_body

from .deps import Intake
from .origin import Origin

router = APIRouter(tags=["HL7v2"])

HL7_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7", "text/plain", "application/edi-hl7")


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"').lower()
    return None


@router.post(
    "/hl7v2",
    summary="Send one HL7v2 message or batch (ER7); the reply is its ACK",
    response_class=Response,
    responses={200: {"content": {"application/hl7-v2": {}}, "description": "the ACK (AA, AE or AR)"}},
)
async def post_hl7v2(request: Request, intake: Intake, caller: CallerDep, peer: Peer) -> Response:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in HL7_TYPES:
        return Response(
            f"Content-Type {content_type or '(none)'!r} is not HL7v2: send application/hl7-v2\n",
            status_code=415,
            media_type="text/plain",
        )
    limit = intake.settings.mllp_max_message_bytes
    body, size = await read_body(request, limit, intake.budget)
    if size > limit:
        reply = await intake.hl7.receive_oversize(body[:limit], size, limit, channel="http", peer=peer, caller=caller)
        return Response(
            f"message of {size} bytes exceeds the limit of {limit} bytes; "
            f"kept as record {reply.record_ids[0] if reply.record_ids else '(not stored)'}\n",
            status_code=413,
            media_type="text/plain",
        )
    charset = _charset(content_type)
    origin = Origin("http", request.client.host if request.client else "")  # for the sender allow-list
    reply = await intake.hl7.receive(body, channel="http", peer=peer, caller=caller, charset=charset, origin=origin)
    if not reply.stored:
        return Response(
            "the message was not stored (database unavailable): send it again\n",
            status_code=503,
            media_type="text/plain",
            headers={"Retry-After": "5"},
        )
    return Response(
        reply.body,
        media_type=f"application/hl7-v2; charset={reply.charset}",
        headers={"X-Message-Id": ",".join(reply.record_ids), "X-Ack-Code": reply.code},
    )
