"""What the hub's HTTP routers share, the API's (``services/api/``) and intake's (``services/intake/``): the
FHIR JSON response, the OperationOutcome answer to a ``FhirError``, the caller and peer dependencies, and
the bounded body read.

It imports Starlette and FastAPI, so only a process that serves HTTP may load it: the workers (mapper,
notifier) never do (``tests/test_architecture.py`` follows their imports to make sure). The app keeps the
process's ``Settings`` in ``app.state.settings``; the caller dependency reads them from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from shared.auth import Caller, Unauthenticated
from shared.bearer import Authenticator
from shared.budget import ByteBudget
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


async def get_caller(request: Request) -> Caller:
    """The caller of this request, resolved once (``shared.bearer.Authenticator``, kept in
    ``app.state.auth``): from its bearer token, or the development client where that is allowed. Sets
    ``request.state.caller``; when it refuses, ``request.state.auth_failure`` (the reason) and then raises
    ``Unauthenticated`` (the app answers 401)."""
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    authenticator: Authenticator = request.app.state.auth
    peer = request.client.host if request.client else None
    try:
        caller = await authenticator.http_caller(request.headers.get("authorization"), peer)
    except Unauthenticated as exc:
        request.state.auth_failure = exc.reason
        raise
    request.state.caller = caller
    return caller


async def read_body(request: Request, limit: int, budget: ByteBudget | None = None) -> tuple[bytes, int]:
    """The body, streamed: at most ``limit + 1`` bytes are kept (the rest is counted, not held), and
    its full size. A caller compares the size with ``limit`` to refuse oversize bodies.

    With ``budget`` (intake's bytes in flight, ``shared/budget.py``) each chunk is taken from it before
    the next is read: when it is spent the read waits (the server stops reading the socket), and the
    bytes are given back once the body is read."""
    kept = bytearray()
    size = 0
    account = budget.account() if budget is not None else None
    allowed = get_settings(request).http_body_timeout_s
    try:
        # One deadline for the whole body (waits for the budget included): a sender trickling a byte a
        # second cannot extend it.
        async with asyncio.timeout(allowed):
            async for chunk in request.stream():
                if account is not None:
                    await account.take(len(chunk))
                size += len(chunk)
                if len(kept) <= limit:
                    kept += chunk[: limit + 1 - len(kept)]
                if account is not None:
                    account.keep(len(kept))
    except ClientDisconnect as exc:
        raise PartialBody(bytes(kept[:limit]), size) from exc
    except TimeoutError as exc:
        reason = f"the request body was not complete within {allowed:g} s (MSCC_HTTP_BODY_TIMEOUT_S): {size} bytes came"
        raise PartialBody(bytes(kept[:limit]), size, reason=reason, status=408) from exc
    finally:
        if account is not None:
            account.close()
    return bytes(kept), size


class PartialBody(Exception):
    """The client went away before its body was complete: ``head`` (at most the limit) of the ``size``
    bytes that came. The app keeps them as a rejected record, as intake keeps a cut MLLP frame."""

    def __init__(self, head: bytes, size: int, *, reason: str | None = None, status: int = 400) -> None:
        super().__init__(reason or f"the request body was cut short: the client disconnected after {size} bytes")
        self.head = head
        self.size = size
        self.status = status  # 400 for a client gone (answered to no one), 408 for a body too slow


def peer_of(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


CallerDep = Annotated[Caller, Depends(get_caller)]
Peer = Annotated[str, Depends(peer_of)]
