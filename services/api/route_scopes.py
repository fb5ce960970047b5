"""Which SMART scope each route of the API needs (the table in ``docs/security.md`` says the same).

Decided from the route's path template and method, so every router (intake's, the pathway's, the
notifier's, the read side's, and any added later) is covered without declaring anything itself:

    GET  /fhir/{type}, /fhir/{type}/_search, POST .../_search, GET /fhir/{type}/_history     {type}.s
    GET  /fhir/{type}/{id}, .../_history, .../_history/{v}; GET or POST .../$status, $events  {type}.r
    POST /fhir/{type}, POST /fhir/{type}/$validate                                           {type}.c
    POST /fhir (transaction, batch or message Bundle)                                        Bundle.c
    PUT  /fhir/{type}/{id}; POST /fhir/{type}/{id}/$transition, $redeliver, $skip            {type}.u
    DELETE /fhir/{type}/{id}                                                                 {type}.d
    POST /hl7v2                                                                              hl7v2.c
    GET  /admin/...                                                                          *.r
    POST, PUT, DELETE /admin/... (review decisions)                                          *.u
    GET  /ui/... (dashboard pages); POST /ui/... (its actions)                               *.r; *.u

A ``*`` requirement is met only by a ``system/*...`` scope. ``PUBLIC`` routes need no token at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.scopes import ANY_TYPE, HL7V2, Scope, needed

PUBLIC = frozenset(
    {
        "/metadata",
        "/fhir/metadata",
        "/healthz",
        "/readyz",
        "/metrics",
        "/oauth2/token",
        "/oauth2/jwks",
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        # The dashboard's sign-in and assets (services/ui/); its pages and actions need *.r and *.u.
        "/ui/login",
        "/ui/logout",
        "/ui/static/{name}",
    }
)
READ_OPERATIONS = frozenset({"$status", "$events"})
READS = frozenset({"GET", "HEAD"})


def needed_scope(method: str, template: str, params: Mapping[str, str]) -> Scope:
    """The scope a request to the route ``template`` (e.g. ``/fhir/{resource_type}/{resource_id}``) needs."""
    parts = [p for p in template.split("/") if p]
    if parts[:1] == ["hl7v2"]:
        return needed(HL7V2, "c")
    if parts[:1] != ["fhir"]:
        return needed(ANY_TYPE, "r" if method in READS else "u")
    if len(parts) == 1:
        return needed("Bundle", "c")
    first = parts[1]
    resource_type = params.get(first[1:-1], ANY_TYPE) if first.startswith("{") else first
    return needed(resource_type, _letter(method, parts[2:]))


def _letter(method: str, tail: list[str]) -> str:
    last = tail[-1] if tail else ""
    if method in READS:
        return "s" if last in ("", "_search") or tail == ["_history"] else "r"
    if method == "DELETE":
        return "d"
    if method in ("PUT", "PATCH"):
        return "u"
    if last == "_search":
        return "s"
    if last in READ_OPERATIONS:
        return "r"
    if last == "$validate" or not tail:
        return "c"
    return "u"
