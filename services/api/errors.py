"""One error shape per API: an OperationOutcome for every FHIR path (``/fhir...``), JSON ``{"detail": ...}``
for the operator routes, plain text for an unauthenticated caller of ``/hl7v2``.

``install`` registers the handlers on the app; each route raises (``FhirError``, ``HTTPException``) rather
than building its own error answer. A database failure no route turned into an answer is a 503 with
``Retry-After``, so the client sends again.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import Unauthenticated
from shared.fhir import FhirError
from shared.http_server import outcome_response

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register the API's exception handlers on ``app``."""

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        return outcome_response(exc)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated) -> Response:
        if request.url.path.startswith("/fhir"):
            return outcome_response(FhirError(401, "login", str(exc)))
        return Response(f"{exc}\n", status_code=401, media_type="text/plain")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/fhir"):
            code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
            detail = f"{request.method} {request.url.path}: {exc.detail}"
            return outcome_response(FhirError(exc.status_code, code, detail), exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/fhir"):
            return outcome_response(FhirError(400, "invalid", f"request is not valid: {exc.errors()}"))
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    @app.exception_handler(PyMongoError)
    async def database_error(request: Request, exc: PyMongoError) -> Response:
        """A database failure no route turned into an answer: 503, so the client retries."""
        log.error("database error", extra={"path": request.url.path, "reason": str(exc)})
        if request.url.path.startswith("/fhir"):
            return outcome_response(FhirError(503, "transient", "the database did not answer, try again"))
        return JSONResponse(
            {"detail": "the database did not answer, try again"}, status_code=503, headers={"Retry-After": "5"}
        )
