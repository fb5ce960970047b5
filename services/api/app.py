"""The hub's HTTP application: the FHIR REST API and the routers each part owns, wired together.

    intake    POST /hl7v2, POST /fhir/ServiceRequest, POST /fhir        (services/intake/routes_*.py)
    pathway   POST /fhir/ServiceRequest/{id}/$transition, PUT           (routes_pathway.py, here)
    notifier  /fhir/Subscription...                                     (routes_subscriptions.py, here)
    api       metadata, read, vread, search, history, $validate         (routes_fhir.py)
              /admin/messages (review), /healthz, /readyz

The pathway's and the notifier's routers live here, calling those packages' functions, so neither
package imports an HTTP framework. Errors are one shape per API (``errors.py``); ``_format``, ``_pretty``,
``Accept`` and ``HEAD`` are handled once, before routing (``negotiation.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from shared.http_server import FhirResponse
from shared.supervision import TaskRegistry

from ..intake import routes_fhir as intake_fhir
from ..intake import routes_hl7
from ..intake.service import IntakeService
from . import errors, routes_fhir, routes_health, routes_pathway, routes_review, routes_subscriptions
from .access import authorize
from .access import setup as setup_access
from .audit import install as install_audit
from .capability import hub_version
from .deps import ApiServices
from .negotiation import FhirNegotiation
from .openapi import describe as describe_openapi
from .routes_audit import router as audit_router


def create_app(service: IntakeService, tasks: TaskRegistry | None = None) -> FastAPI:
    """The FastAPI app over an already-constructed ``IntakeService`` (its lifecycle is the caller's);
    ``tasks``: the background tasks of this process, which ``/readyz`` reports on."""
    # The title the OpenAPI document has always had: tooling that generated a client from it keys on it.
    app = FastAPI(
        title="MSCC integration hub: intake",
        description="HL7v2 and FHIR R4 referrals in; every message stored before it is acknowledged.",
        version=hub_version(),
        # Every route but the public ones needs a token with the route's scope (access.py, route_scopes.py).
        dependencies=[Depends(authorize)],
    )
    app.state.intake = service
    app.state.settings = service.settings
    app.state.api = ApiServices(service)
    app.state.tasks = tasks or TaskRegistry()
    # Authentication (token endpoint, JWKS, SMART configuration), scopes and rate limits: before the routers.
    setup_access(app, service.settings, service.store)
    # _format, _pretty, Accept (406) and HEAD for every FHIR interaction, before routing.
    app.add_middleware(FhirNegotiation)
    # Order matters: the specific /fhir/... paths come before routes_fhir's generic /fhir/{type}/...
    app.include_router(routes_hl7.router)
    app.include_router(routes_review.router)
    app.include_router(routes_pathway.router)
    app.include_router(routes_subscriptions.router)
    app.include_router(audit_router)  # /fhir/AuditEvent: the audit trail, MSCC team only
    _metadata(app, "/fhir/metadata", "CapabilityStatement")
    app.include_router(intake_fhir.router)
    app.include_router(routes_fhir.router)
    _metadata(app, "/metadata", "CapabilityStatement (also at /fhir/metadata)")
    app.include_router(routes_health.router)
    errors.install(app)
    # The audit trail: outermost, so it sees every answer, those of the other middleware (406, 429) too.
    # Keep it the last middleware added.
    install_audit(app, service.store, service.settings)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document with the request bodies and query parameters the FHIR routes read raw."""
        if app.openapi_schema is None:
            app.openapi_schema = describe_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _metadata(app: FastAPI, path: str, summary: str) -> None:
    app.add_api_route(
        path, routes_fhir.metadata, methods=["GET"], response_class=FhirResponse, summary=summary, tags=["FHIR"]
    )
