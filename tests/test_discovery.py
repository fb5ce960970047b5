"""How a client finds out how to call the hub: the CapabilityStatement's ``rest.security`` (SMART on FHIR,
the token endpoint) and the OpenAPI document's OAuth 2.0 scheme with each operation's scope, which must be
the scope the route really needs.
"""

from __future__ import annotations

from typing import Any

import httpx
from trusts import client_as

from services.api.openapi import route_scope
from services.api.route_scopes import PUBLIC
from shared.settings import Settings

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


async def test_the_capability_statement_says_smart_on_fhir_and_where_the_token_is(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    for path in ("/fhir/metadata", "/metadata"):
        answer = await http.get(path)
        assert answer.status_code == 200
        security = answer.json()["rest"][0]["security"]
        [service] = security["service"]
        assert {
            "code": "SMART-on-FHIR",
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        }.items() <= service["coding"][0].items()
        [uris] = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
        assert uris["extension"] == [{"url": "token", "valueUri": f"{settings.base_url}/oauth2/token"}]
        assert "/oauth2/token" in security["description"] and "scope" in security["description"]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


async def test_the_openapi_document_declares_client_credentials_and_each_operations_scope(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    document = (await http.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["oauth2"]
    flow = scheme["flows"]["clientCredentials"]
    assert scheme["type"] == "oauth2" and flow["tokenUrl"] == f"{settings.base_url}/oauth2/token"
    found = operations(document)
    assert len(found) > 20
    for method, path, operation in found:
        if path in PUBLIC:
            assert operation["security"] == [], f"{method} {path} is public"
        else:
            [requirement] = operation["security"]
            assert requirement == {"oauth2": [route_scope(method, path)]}, f"{method} {path}"
            assert requirement["oauth2"][0] in flow["scopes"]
    scope = {(m, p): op["security"] for m, p, op in found}
    assert scope["get", "/fhir/{resource_type}"] == [{"oauth2": ["system/{resource_type}.s"]}]
    assert scope["post", "/fhir"] == [{"oauth2": ["system/Bundle.c"]}]
    assert scope["post", "/hl7v2"] == [{"oauth2": ["system/hl7v2.c"]}]
    assert scope["get", "/fhir/Subscription/{subscription_id}/$events"] == [{"oauth2": ["system/Subscription.r"]}]
    assert scope["post", "/fhir/ServiceRequest/{referral_id}/$transition"] == [{"oauth2": ["system/ServiceRequest.u"]}]
    assert scope["get", "/fhir/metadata"] == [] and scope["post", "/oauth2/token"] == []


async def test_the_scope_the_document_names_is_the_one_the_route_enforces(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    [named] = document["paths"]["/fhir/Subscription"]["get"]["security"][0]["oauth2"]
    async with client_as(http, "RBL", [named]) as enough, client_as(http, "RBL", ["system/Patient.rs"]) as other:
        assert (await enough.get("/fhir/Subscription")).status_code == 200
        refused = await other.get("/fhir/Subscription")
    assert refused.status_code == 403 and named in refused.headers["WWW-Authenticate"]
