"""The OpenAPI document's request bodies and query parameters, which the routes cannot declare themselves.

The FHIR routes read their bodies raw (the exact bytes are kept as the message record) and take search
parameters that depend on the resource type, so FastAPI sees neither. ``describe`` adds them to the
generated document, route by route, from the same data the server uses (``shared.search.PARAMETERS``): FHIR
JSON bodies (loosely typed: a resource, a Bundle, Parameters), the form of ``_search``, HL7v2 text, and
every query parameter and conditional header each interaction takes. Nothing here changes behaviour.

Where a value has a closed set of forms, the document says so (``VALUES``: ``_format``, ``_count``...; a
path's resource type, id and version), so that a client, or a test generating requests from this
document, knows a valid request from one the server refuses with 400, 404 or 406.

Security: the document declares the OAuth 2.0 client credentials scheme (``oauth2``, its token URL) and,
per operation, the SMART scope the route needs, decided by the same function that guards the route
(``route_scopes.needed_scope``); on a route generic over the type the scope names the path's type
(``system/{resource_type}.s``). Public routes (``route_scopes.PUBLIC``) declare no security.
"""

from __future__ import annotations

from typing import Any

from shared.fhir import FHIR_JSON
from shared.search import COMMON, PARAM_TYPES, PARAMETERS

from ..pathway.updates import UPDATABLE
from .access import describe as scope_text
from .capability import SUPPORTED_TYPES
from .route_scopes import PUBLIC, needed_scope

Schema = dict[str, Any]
REF = "#/components/schemas/"
SCHEMAS: dict[str, Schema] = {
    "FhirResource": {
        "title": "FhirResource",
        "description": "A FHIR R4 resource in JSON (validated by the server against the R4 definitions)",
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}, "meta": {"type": "object"}},
        "additionalProperties": True,
    },
    "Bundle": {
        "title": "Bundle",
        "description": "A FHIR R4 Bundle: transaction, batch or message",
        "type": "object",
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]},
            "type": {"type": "string", "enum": ["transaction", "batch", "message"]},
            "entry": {"type": "array", "items": {"type": "object"}},
        },
        "additionalProperties": True,
    },
    "Parameters": {
        "title": "Parameters",
        "description": "A FHIR R4 Parameters resource",
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Parameters"]},
            "parameter": {"type": "array", "items": {"type": "object"}},
        },
        "additionalProperties": True,
    },
}
FORMAT_PARAMETERS = [
    ("_format", "json, application/fhir+json or application/json (XML is answered 406)"),
    ("_pretty", "true (indented JSON) or false (compact, the default)"),
]
SUBSET_PARAMETERS = [
    ("_summary", "true, text, data, false (and count on search): a summary, tagged SUBSETTED"),
    ("_elements", "comma-separated top-level element names; mandatory elements are kept; tagged SUBSETTED"),
]
PAGE_PARAMETERS = [("_count", "page size, 0-100 (0: the total alone); default 20"), ("_offset", "paging offset")]
TOTAL_PARAMETERS = [("_total", "none, estimate, accurate: the total is always exact"), ("_totalMethod", "as _total")]
HISTORY_PARAMETERS = [
    ("_count", "page size, 1-100; default 20"),
    ("_offset", "paging offset"),
    ("_since", "only versions from this instant on (e.g. 2026-01-05T09:30:00Z)"),
]


FHIR_ID: Schema = {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"}
# The closed forms of the parameters that have one (every other is a string the server parses).
VALUES: dict[str, Schema] = {
    "_format": {"type": "string", "enum": ["json", "application/fhir+json", "application/json"]},
    "_pretty": {"type": "string", "enum": ["true", "false"]},
    "_summary": {"type": "string", "enum": ["true", "text", "data", "count", "false"]},
    "_total": {"type": "string", "enum": ["none", "estimate", "accurate"]},
    "_totalMethod": {"type": "string", "enum": ["none", "estimate", "accurate"]},
    "_count": {"type": "integer", "minimum": 0, "maximum": 100},
    "_offset": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
}
PATH_VALUES: dict[str, Schema] = {
    "resource_type": {"type": "string", "enum": list(SUPPORTED_TYPES)},
    "resource_id": FHIR_ID,
    "referral_id": FHIR_ID,
    "subscription_id": FHIR_ID,
    "version": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}


def _query(name: str, description: str) -> Schema:
    schema = VALUES.get(name, {"type": "string"})
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _header(name: str, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": {"type": "string"}}


def search_parameters() -> list[Schema]:
    """Every search parameter, naming the types that take it (the route is generic over the type)."""
    types: dict[str, list[str]] = {}
    for resource_type, params in PARAMETERS.items():
        for name in params:
            types.setdefault(name, []).append(resource_type)
    out = [_query(name, f"{PARAM_TYPES[name]}, every type") for name in COMMON]
    for name, on in types.items():
        kind = PARAM_TYPES.get(name.split(":", 1)[0], "token")
        out.append(_query(name, f"{kind}, on {', '.join(on)}"))
    out += [_query(n, d) for n, d in (*PAGE_PARAMETERS, *SUBSET_PARAMETERS, *TOTAL_PARAMETERS)]
    return out


def _body(schema: str, description: str, media: tuple[str, ...] = (FHIR_JSON, "application/json")) -> Schema:
    content = {m: {"schema": {"$ref": REF + schema}} for m in media}
    return {"required": True, "description": description, "content": content}


def _resource_body(resource_type: str, description: str) -> Schema:
    schema: Schema = {
        "allOf": [{"$ref": REF + "FhirResource"}],
        "properties": {"resourceType": {"type": "string", "enum": [resource_type]}},
    }
    content = {m: {"schema": schema} for m in (FHIR_JSON, "application/json")}
    return {"required": True, "description": description, "content": content}


PREFER = _header("Prefer", "return=minimal | representation | OperationOutcome")
CONDITIONAL_READ = [
    _header("If-None-Match", 'an ETag such as W/"3": 304 when it is the current version'),
    _header("If-Modified-Since", "an HTTP date: 304 when the resource has not changed since"),
]


# The interactions that honour Prefer: return= (create of a referral, update of the pathway's types).
PREFERRING = {("post", "/fhir/ServiceRequest"), *(("put", f"/fhir/{t}/{{resource_id}}") for t in UPDATABLE)}


def _request_body(method: str, path: str) -> Schema | None:
    """The body a POST or PUT on ``path`` takes, or None when it takes none."""
    if method == "post" and path == "/hl7v2":
        content = {"application/hl7-v2": {"schema": {"type": "string", "description": "ER7 (MSH first)"}}}
        return {"required": True, "description": "one HL7v2 message", "content": content}
    if not path.startswith("/fhir"):
        return None
    last = path.rsplit("/", 1)[-1]
    if path == "/fhir":
        return _body("Bundle", "a transaction, batch or message Bundle")
    if last == "$validate":
        either: Schema = {
            m: {"schema": {"oneOf": [{"$ref": REF + "FhirResource"}, {"$ref": REF + "Parameters"}]}}
            for m in (FHIR_JSON, "application/json")
        }
        return {"required": True, "description": "the resource, or Parameters with a resource", "content": either}
    if last == "_search":
        form = {"type": "object", "additionalProperties": {"type": "string"}}
        return {
            "required": False,
            "description": "search parameters, as on GET",
            "content": {"application/x-www-form-urlencoded": {"schema": form}},
        }
    if last == "$transition":
        return _body("Parameters", "step (valueCode), time (valueDateTime), note, who")
    if last.startswith("$"):
        return None
    parts = path.strip("/").split("/")
    if method == "post" and len(parts) == 2:
        return _resource_body(parts[1], f"the {parts[1]} to create")
    if method == "put" and len(parts) == 3:
        return _resource_body(parts[1], f"the new version of the {parts[1]} (with meta.versionId, or If-Match)")
    return None


def _parameters(method: str, path: str) -> list[Schema]:
    """The query parameters and headers the generated document misses for ``method path``."""
    if not (path.startswith("/fhir") or path == "/metadata"):
        return []
    extra = [_query(n, d) for n, d in FORMAT_PARAMETERS]
    if method == "get" and path in ("/fhir/{resource_type}", "/fhir/{resource_type}/_search"):
        extra += search_parameters()
    elif method == "get" and path.endswith("/_history"):
        extra += [_query(n, d) for n, d in HISTORY_PARAMETERS]
    elif method == "get" and path in (
        "/fhir/{resource_type}/{resource_id}",
        "/fhir/{resource_type}/{resource_id}/_history/{version}",
    ):
        extra += [_query(n, d) for n, d in SUBSET_PARAMETERS] + CONDITIONAL_READ
    if (method, path) in PREFERRING:
        extra.append(PREFER)
    return extra


SCHEME = "oauth2"
SCOPE_LETTERS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def route_scope(method: str, path: str) -> str | None:
    """The scope an operation needs (``system/Subscription.r``, ``system/{resource_type}.s``), or None
    for a public route."""
    if path in PUBLIC:
        return None
    return scope_text(needed_scope(method.upper(), path, {"resource_type": "{resource_type}"}))


def security_scheme(token_url: str, scopes: set[str]) -> Schema:
    """The OAuth 2.0 client credentials scheme, with every scope some operation names."""
    described = {}
    for scope in sorted(scopes):
        kind, letters = scope.removeprefix("system/").rsplit(".", 1)
        what = " and ".join(SCOPE_LETTERS[letter] for letter in letters)
        on = "the resource type in the path" if kind.startswith("{") else "every type" if kind == "*" else kind
        described[scope] = f"{what} on {on}"
    flow = {"tokenUrl": token_url, "scopes": described}
    return {
        "type": "oauth2",
        "description": "OAuth 2.0 client credentials (SMART Backend Services): a client authenticates with a "
        "signed JWT assertion (private_key_jwt) or its secret at the token URL and sends the access token as "
        "Authorization: Bearer. A scope for a type is also granted by system/*.<letters> and the v1 forms "
        "(system/*.read, system/*.write).",
        "flows": {"clientCredentials": flow},
    }


def describe(document: Schema, token_url: str = "/oauth2/token") -> Schema:
    """``document`` (FastAPI's generated OpenAPI) with the request bodies, parameters and security added,
    in place; ``token_url``: the token endpoint's URL (``MSCC_PUBLIC_BASE_URL`` + ``/oauth2/token``)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(SCHEMAS)
    scopes: set[str] = set()
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            scope = route_scope(method, path)
            operation["security"] = [{SCHEME: [scope]}] if scope else []
            scopes |= {scope} if scope else set()
            if method in ("post", "put") and "requestBody" not in operation:
                body = _request_body(method, path)
                if body is not None:
                    operation["requestBody"] = body
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in PATH_VALUES and path.startswith("/fhir"):
                    parameter["schema"] = {**parameter.get("schema", {}), **PATH_VALUES[parameter["name"]]}
            present = {(p["name"].lower(), p["in"]) for p in operation.get("parameters", [])}
            for parameter in _parameters(method, path):
                if (parameter["name"].lower(), parameter["in"]) not in present:
                    operation.setdefault("parameters", []).append(parameter)
                    present.add((parameter["name"].lower(), parameter["in"]))
    document["components"].setdefault("securitySchemes", {})[SCHEME] = security_scheme(token_url, scopes)
    return document
