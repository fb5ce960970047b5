"""The HTTP application is composed from the routers each room owns: intake keeps only its inbound routes,
and the API serves them beside the read side, the pathway's, the notifier's and the operators' routes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

from services.api import routes_fhir, routes_health, routes_pathway, routes_review, routes_subscriptions
from services.api.app import create_app
from services.intake import routes_fhir as intake_fhir
from services.intake import routes_hl7
from services.intake.service import IntakeService


def _routes(*routers: APIRouter) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


def test_intake_owns_only_the_inbound_routes() -> None:
    assert _routes(routes_hl7.router, intake_fhir.router) == {
        ("POST", "/hl7v2"),
        ("POST", "/fhir/ServiceRequest"),
        ("POST", "/fhir"),
    }


def test_the_api_serves_every_rooms_routes(intake: IntakeService) -> None:
    paths = create_app(intake).openapi()["paths"]
    served = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    routers = (
        routes_hl7.router,
        intake_fhir.router,
        routes_fhir.router,
        routes_pathway.router,
        routes_subscriptions.router,
        routes_review.router,
        routes_health.router,
    )
    assert _routes(*routers) <= served
    assert {("GET", "/metadata"), ("GET", "/fhir/metadata")} <= served
