"""The intake HTTP application: routers, health, and one error shape per API (OperationOutcome for FHIR)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import Unauthenticated
from shared.fhir import FhirError
from shared.supervision import TaskRegistry

from . import routes_fhir, routes_hl7, routes_pathway, routes_review, routes_subscriptions
from .deps import Intake
from .negotiation import FhirNegotiation
from .openapi import describe as describe_openapi
from .routes_fhir import FhirResponse, metadata, outcome_response
from .service import IntakeService

log = logging.getLogger(__name__)


def create_app(service: IntakeService, tasks: TaskRegistry | None = None) -> FastAPI:
    """The FastAPI app over an already-constructed ``IntakeService`` (its lifecycle is the caller's);
    ``tasks``: the background tasks of this process, which ``/readyz`` reports on."""
    app = FastAPI(
        title="MSCC integration hub: intake",
        description="HL7v2 and FHIR R4 referrals in; every message stored before it is acknowledged.",
        version=routes_fhir._version(),
    )
    app.state.intake = service
    app.state.tasks = tasks or TaskRegistry()
    # _format, _pretty, Accept (406) and HEAD for every FHIR interaction, before routing.
    app.add_middleware(FhirNegotiation)
    app.include_router(routes_hl7.router)
    app.include_router(routes_review.router)
    app.include_router(routes_pathway.router)  # before routes_fhir's generic /fhir/{type}/... paths
    app.include_router(routes_subscriptions.router)  # likewise
    app.include_router(routes_fhir.router)
    app.add_api_route(
        "/metadata",
        metadata,
        methods=["GET"],
        response_class=FhirResponse,
        summary="CapabilityStatement (also at /fhir/metadata)",
        tags=["FHIR"],
    )

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document with the request bodies and query parameters the FHIR routes read raw."""
        if app.openapi_schema is None:
            app.openapi_schema = describe_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", tags=["operations"], summary="The process is running")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Ready: the store answers and every background task of this process completes its cycles",
    )
    async def readyz(intake: Intake, request: Request) -> JSONResponse:
        """503 naming what is wrong: the database does not answer, or a background task (mapper, SLA
        scanner, notifier loops) is dead or has completed no cycle in its expected time. ``tasks``
        says, for each, its state, when it last completed a cycle, its restarts and its last error."""
        registry: TaskRegistry = request.app.state.tasks
        reasons = [] if await intake.store.ping() else ["the database does not answer"]
        problems = registry.problems()
        if problems:
            reasons.append("background task(s) not running: " + "; ".join(problems.values()))
        body: dict[str, object] = {"status": "unavailable" if reasons else "ready", "tasks": registry.report()}
        if reasons:
            body["reason"] = "; ".join(reasons)
            body["unhealthy_tasks"] = sorted(problems)
        return JSONResponse(body, status_code=503 if reasons else 200)

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

    return app
