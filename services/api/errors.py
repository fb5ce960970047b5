"""One error shape per API: an OperationOutcome for every FHIR path (``/fhir...``), JSON ``{"detail": ...}``
for the operator routes; refused callers (401, 403, 429) are answered by ``access.py`` in the same shapes.

``install`` registers the handlers on the app; each route raises (``FhirError``, ``HTTPException``) rather
than building its own error answer. A database failure no route turned into an answer is told apart
(``shared/db_errors.py``): a transient one is a 503 with ``Retry-After``, so the client sends again; a
permanent one (too large, a key that cannot be indexed, a validation error) its own 4xx, never "try
again". Only the error's class and code are logged: a database error's text can carry the data written.
A body cut short by a client that went away (``PartialBody``) is kept as a rejected record, as intake
keeps a cut MLLP frame, and logged in one line.
"""

from __future__ import annotations

import logging

from bson.errors import BSONError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shared.auth import Caller
from shared.db_errors import database_failure, log_failure
from shared.fhir import FhirError
from shared.http_server import PartialBody, outcome_response
from shared.retry import TransientError

from ..intake.service import IntakeService

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register the API's exception handlers on ``app``."""

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        return outcome_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/fhir"):
            code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
            detail = f"{request.method} {request.url.path}: {exc.detail}"
            return outcome_response(FhirError(exc.status_code, code, detail), exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> Response:
        # Without the input echoed back: it may be bytes, or anything the client sent.
        errors = jsonable_encoder([{k: v for k, v in e.items() if k != "input"} for e in exc.errors()])
        if request.url.path.startswith("/fhir"):
            return outcome_response(FhirError(400, "invalid", f"request is not valid: {errors}"))
        return JSONResponse({"detail": errors}, status_code=422)

    async def database_error(request: Request, exc: Exception) -> Response:
        """A database failure no route turned into an answer: 503 when transient, so the client sends
        again; otherwise the permanent failure's own status (``shared.db_errors.database_failure``)."""
        error = database_failure(exc, f"{request.method} {request.url.path}")
        # An outage is an error; a write refused because of the request itself, a warning saying what to do.
        log_failure(log, "database error", exc, path=request.url.path, status=error.status)
        if request.url.path.startswith("/fhir"):
            return outcome_response(error)
        headers = {"Retry-After": "5"} if error.status == 503 else None
        return JSONResponse({"detail": error.issues[0]["diagnostics"]}, status_code=error.status, headers=headers)

    for failure in (PyMongoError, BSONError, TransientError):
        app.add_exception_handler(failure, database_error)

    @app.exception_handler(PartialBody)
    async def partial_body(request: Request, exc: PartialBody) -> Response:
        """Keep what came of a body the client did not finish, with the reason; answer 400 (to no one,
        the client is gone) or 408 (the body did not arrive in time)."""
        await keep_partial(request, exc)
        return outcome_response(FhirError(exc.status, "incomplete" if exc.status == 400 else "timeout", str(exc)))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        """A client gone before its request was read (outside the bounded body read): one line."""
        log.warning("client disconnected before its request was read", extra={"path": request.url.path})
        return outcome_response(FhirError(400, "incomplete", "the client disconnected"))


async def keep_partial(request: Request, exc: PartialBody) -> None:
    """Keep the bytes of a cut body as a rejected record: an HL7v2 one as intake keeps an unfinished MLLP
    frame (which logs it), a FHIR one as a refused FHIR body (logged here, in one line)."""
    intake: IntakeService = request.app.state.intake
    caller: Caller | None = getattr(request.state, "caller", None)
    peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    where = {"path": request.url.path, "size": exc.size, "peer": peer}
    if caller is None:  # not authenticated: nothing is kept for an unknown caller
        log.warning("request body cut short; not kept (no caller)", extra=where)
        return
    if request.url.path == "/hl7v2":
        await intake.hl7.keep_unacknowledged(exc.head, str(exc), channel="http", peer=peer, caller=caller)
        return
    header = {"interaction": "incomplete", "method": request.method, "path": request.url.path}
    error = FhirError(exc.status, "incomplete" if exc.status == 400 else "timeout", str(exc))
    await intake.fhir.keep_rejected(exc.head, error, caller, peer, header)
    log.warning("request body cut short; kept as rejected", extra=where)
