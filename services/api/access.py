"""Access to the API: every route but the public ones needs a caller (``get_caller``) whose scopes cover
what the route needs (``route_scopes.py``), within its rate limit; and the answers when it is refused.

``authorize`` is a dependency of the whole app (``create_app``), so a route added by any router is
guarded without declaring anything. It resolves the caller once per request (routes that take
``CallerDep`` get the same one) and, when it refuses, records the reason in ``request.state.auth_failure``
before raising, for whatever records refused attempts.

Answers: 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token was sent), 403
with ``error="insufficient_scope"`` and the scope needed, 429 with ``Retry-After``; an OperationOutcome on
FHIR paths, plain text on ``/hl7v2`` (what HL7v2 senders read), JSON ``{"detail": ...}`` elsewhere.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shared.auth import Forbidden, Unauthenticated
from shared.bearer import Authenticator
from shared.fhir import FhirError
from shared.http_server import get_caller, outcome_response
from shared.scopes import Scope
from shared.settings import Settings
from shared.store import Store

from . import routes_oauth
from .oauth_grant import TokenEndpoint
from .rate_limit import RateLimited, TokenBuckets
from .route_scopes import PUBLIC, needed_scope

REALM = 'realm="MSCC hub"'


def describe(scope: Scope) -> str:
    """The narrowest SMART scope that grants ``scope``, as a client would ask for it."""
    letters = "".join(letter for letter in "cruds" if letter in scope.permissions)
    return f"system/{scope.resource_type}.{letters}"


def route_template(request: Request) -> str:
    """The path template of the route that matched (``/fhir/{resource_type}/{resource_id}``); the path
    itself when the route's own template does not describe it (a router included under a prefix), which
    ``needed_scope`` reads the same way (FHIR ids hold no ``_`` or ``$``, so ids and keywords never mix)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    route = request.scope.get("route")
    regex = getattr(route, "path_regex", None)
    if regex is not None and regex.match(path):
        template: str = route.path  # type: ignore[union-attr]
        return template
    return path


async def authorize(request: Request) -> None:
    """Admit the request or raise ``Unauthenticated`` (401), ``Forbidden`` (403) or ``RateLimited`` (429)."""
    template = route_template(request)
    if template in PUBLIC:
        return
    caller = await get_caller(request)
    need = needed_scope(request.method, template, request.path_params)
    if not caller.allows(need):
        wanted = describe(need)
        request.state.auth_failure = f"scope {wanted} not granted to client {caller.client_id}"
        raise Forbidden(f"{request.method} {request.url.path} needs the scope {wanted} (or a wider one)", wanted)
    limits: TokenBuckets = request.app.state.rate_limits
    try:
        limits.check(caller.client_id)
    except RateLimited:
        request.state.auth_failure = f"rate limit exceeded by client {caller.client_id}"
        raise


def _answer(request: Request, status: int, code: str, text: str, headers: dict[str, str]) -> Response:
    path = request.url.path
    if path.startswith("/fhir"):
        return outcome_response(FhirError(status, code, text), headers)
    if path.startswith("/hl7v2"):
        return Response(f"{text}\n", status_code=status, media_type="text/plain", headers=headers)
    return JSONResponse({"detail": text}, status_code=status, headers=headers)


def _quoted(text: str) -> str:
    """``text`` fit for a quoted header parameter: printable ASCII, no quotes or backslashes, bounded."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text[:200])


def install(app: FastAPI) -> None:
    """Register the answers to refused callers on ``app``."""

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated) -> Response:
        challenge = f"Bearer {REALM}"
        if exc.token_given:
            challenge += f', error="invalid_token", error_description="{_quoted(exc.reason)}"'
        return _answer(request, 401, "login", exc.reason, {"WWW-Authenticate": challenge})

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        challenge = f'Bearer {REALM}, error="insufficient_scope", scope="{exc.needed}"'
        return _answer(request, 403, "forbidden", exc.reason, {"WWW-Authenticate": challenge})

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        text = f"{exc}: try again in {exc.retry_after_header} s"
        return _answer(request, 429, "throttled", text, {"Retry-After": exc.retry_after_header})


def setup(app: FastAPI, settings: Settings, store: Store) -> None:
    """What ``authorize`` and the OAuth routes work with, on ``app.state`` (built once per app), the
    OAuth routes themselves, and the answers to refused callers. Call before the other routers are
    included: ``/fhir/.well-known/smart-configuration`` must come before the generic ``/fhir/{type}/{id}``."""
    app.state.auth = Authenticator(settings, store)
    app.state.token_endpoint = TokenEndpoint(app.state.auth, store)
    app.state.rate_limits = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.include_router(routes_oauth.router)
    install(app)
