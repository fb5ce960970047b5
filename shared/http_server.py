"""What the hub's HTTP routers share, the API's (``services/api/``) and intake's (``services/intake/``): the
FHIR JSON response, the OperationOutcome answer to a ``FhirError``, the caller and peer dependencies, and
the bounded body read.

It imports Starlette and FastAPI, so only a process that serves HTTP may load it: the workers (mapper,
notifier) never do (``tests/test_architecture.py`` follows their imports to make sure). The app keeps the
process's ``Settings`` in ``app.state.settings``; the caller dependency reads them from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from shared.auth import Caller, caller_for_http
from shared.fhir import FHIR_JSON, FhirError
from shared.settings import Settings


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def outcome_response(error: FhirError, headers: Mapping[str, str] | None = None) -> FhirResponse:
    """The OperationOutcome answer for ``error`` (503s ask the client to retry after a few seconds)."""
    extra = dict(headers or {})
    if error.status == 503:
        extra.setdefault("Retry-After", "5")
    return FhirResponse(error.outcome(), status_code=error.status, headers=extra)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_caller(request: Request) -> Caller:
    """The caller of this request (``shared.auth.caller_for_http``; the app answers 401 to ``Unauthenticated``)."""
    return caller_for_http(get_settings(request), dict(request.headers))


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


CallerDep = Annotated[Caller, Depends(get_caller)]
Peer = Annotated[str, Depends(peer_of)]
