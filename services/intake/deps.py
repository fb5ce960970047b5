"""FastAPI dependencies: the intake service and the caller, as ``Annotated`` aliases for thin handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shared.auth import Caller, caller_for_http

from .service import IntakeService


def get_intake(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def get_caller(request: Request) -> Caller:
    service: IntakeService = request.app.state.intake
    return caller_for_http(service.settings, dict(request.headers))


async def read_body(request: Request, limit: int) -> tuple[bytes, int]:
    """The body, streamed: at most ``limit + 1`` bytes are kept (the rest is counted, not held), and
    its full size. A caller compares the size with ``limit`` to refuse oversize bodies."""
    kept = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if len(kept) <= limit:
            kept += chunk[: limit + 1 - len(kept)]
    return bytes(kept), size


def peer_of(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


Intake = Annotated[IntakeService, Depends(get_intake)]
CallerDep = Annotated[Caller, Depends(get_caller)]
Peer = Annotated[str, Depends(peer_of)]
