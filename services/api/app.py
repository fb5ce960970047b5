"""The hub's HTTP application: the FHIR REST API and the routers each part owns, wired together.

    intake    POST /hl7v2, POST /fhir/ServiceRequest, POST /fhir        (services/intake/routes_*.py)
    pathway   POST /fhir/ServiceRequest/{id}/$transition, PUT           (routes_pathway.py, here)
              GET /fhir/MeasureReport/$timeliness (the audit)           (routes_reports.py, here)
    notifier  /fhir/Subscription...                                     (routes_subscriptions.py, here)
    api       metadata, read, vread, search, history, $validate         (routes_fhir.py)
              /admin/messages (review), /healthz, /readyz, /metrics (routes_metrics.py)
              /docs, /redoc with local assets                           (docs_pages.py)
    ui        /ui: the operator dashboard, HTML for the MSCC team       (services/ui/)

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
from ..ui import install as install_ui
from . import (
    docs_pages,
    errors,
    routes_fhir,
    routes_health,
    routes_metrics,
    routes_pathway,
    routes_review,
    routes_subscriptions,
)
from .access import authorize
from .access import setup as setup_access
from .audit import install as install_audit
from .capability import hub_version
from .deps import ApiServices
from .negotiation import FhirNegotiation
from .openapi import describe as describe_openapi
from .routes_audit import router as audit_router
from .routes_reports import router as reports_router
from .telemetry import RouteProbe, Telemetry


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
        # /docs and /redoc with local assets, no CDN (docs_pages.py).
        docs_url=None,
        redoc_url=None,
    )
    app.state.intake = service
    app.state.settings = service.settings
    app.state.api = ApiServices(service)
    app.state.tasks = tasks or TaskRegistry()
    # Authentication (token endpoint, JWKS, SMART configuration), scopes and rate limits: before the routers.
    setup_access(app, service.settings, service.store)
    # _format, _pretty, Accept (406) and HEAD for every FHIR interaction, before routing.
    app.add_middleware(RouteProbe)  # innermost: tells Telemetry which route matched (telemetry.py)
    app.add_middleware(FhirNegotiation)
    # Order matters: the specific /fhir/... paths come before routes_fhir's generic /fhir/{type}/...
    app.include_router(routes_hl7.router)
    app.include_router(routes_review.router)
    app.include_router(routes_pathway.router)
    app.include_router(routes_subscriptions.router)
    app.include_router(audit_router)  # /fhir/AuditEvent: the audit trail, MSCC team only
    app.include_router(reports_router)  # /fhir/MeasureReport/$timeliness: before the generic read
    _metadata(app, "/fhir/metadata", "CapabilityStatement")
    app.include_router(intake_fhir.router)
    app.include_router(routes_fhir.router)
    _metadata(app, "/metadata", "CapabilityStatement (also at /fhir/metadata)")
    app.include_router(routes_health.router)
    app.include_router(routes_metrics.router)  # /metrics: public, like /healthz
    docs_pages.install(app)
    install_ui(app)  # /ui: the operator dashboard (services/ui/), MSCC team only
    errors.install(app)
    # Correlation id, request counts and answer times: around every answer but the audit's.
    app.add_middleware(Telemetry)
    # The audit trail: outermost, so it sees every answer, those of the other middleware (406, 429) too.
    # Keep it the last middleware added.
    install_audit(app, service.store, service.settings)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document with the request bodies and query parameters the FHIR routes read raw, and
        the OAuth 2.0 scheme and each operation's scope."""
        if app.openapi_schema is None:
            token_url = f"{service.settings.base_url}/oauth2/token"
            app.openapi_schema = describe_openapi(generate_openapi(), token_url)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _metadata(app: FastAPI, path: str, summary: str) -> None:
    app.add_api_route(
        path, routes_fhir.metadata, methods=["GET"], response_class=FhirResponse, summary=summary, tags=["FHIR"]
    )
