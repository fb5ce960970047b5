"""OAuth 2.0 routes (thin handlers; the logic is ``oauth_grant.py``, the tokens ``shared/tokens.py``):

    POST /oauth2/token                        client credentials grant, form-encoded (RFC 6749 4.4)
    GET  /oauth2/jwks                         the public keys the hub's access tokens are signed with
    GET  /.well-known/smart-configuration     SMART discovery (also under /fhir): the token endpoint and
                                              the client authentication methods it supports

None of them needs a token (``route_scopes.PUBLIC``). Token answers are never cached (``no-store``). A
refused token request is audited and counted against its peer address, which is answered 429 once it has
been refused too often (``token_guard.py``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shared.bearer import ASYMMETRIC, Authenticator
from shared.http_server import read_body

from .oauth_grant import OAuthError, TokenEndpoint

router = APIRouter(tags=["OAuth 2.0"])
MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"


def _oauth_error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**NO_STORE, **exc.headers})


async def _form(request: Request) -> dict[str, list[str]]:
    """The form body's parameters; ``OAuthError`` invalid_request when it is not a readable form."""
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != FORM:
        raise OAuthError("invalid_request", f"send the parameters as {FORM}")
    body, size = await read_body(request, MAX_FORM_BYTES)
    if size > MAX_FORM_BYTES:
        raise OAuthError("invalid_request", f"the request body is larger than {MAX_FORM_BYTES} bytes")
    try:
        return parse_qs(body.decode(), max_num_fields=50)
    except ValueError as exc:  # not UTF-8, or too many fields
        raise OAuthError("invalid_request", f"the form cannot be read: {exc}") from exc


@router.post("/oauth2/token", summary="Get an access token (client credentials; private_key_jwt or a secret)")
async def token(request: Request) -> JSONResponse:
    endpoint: TokenEndpoint = request.app.state.token_endpoint
    peer = request.client.host if request.client else None
    try:
        endpoint.admit(peer)
        answer = await endpoint.grant(await _form(request), request.headers.get("authorization"))
    except OAuthError as exc:
        await endpoint.refused(exc, peer)
        return _oauth_error(exc)
    except Exception:  # the hub's failure (the database, a bug): audited as such, answered by the app
        await endpoint.refused(OAuthError("server_error", "the token endpoint failed", 500), peer)
        raise
    endpoint.granted(peer)
    return JSONResponse(answer, headers=NO_STORE)


@router.get("/oauth2/jwks", summary="The public keys of the hub's access tokens (JWK set)")
async def jwks(request: Request) -> JSONResponse:
    auth: Authenticator = request.app.state.auth
    return JSONResponse(await auth.tokens.jwks(), headers={"Cache-Control": "public, max-age=300"})


def smart_configuration(request: Request) -> dict[str, Any]:
    base = request.app.state.settings.base_url
    return {
        "issuer": base,
        "token_endpoint": f"{base}/oauth2/token",
        "jwks_uri": f"{base}/oauth2/jwks",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ASYMMETRIC,
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/hl7v2.c"],
        "capabilities": [
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "permission-v1",
            "permission-v2",
        ],
    }


for _path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
    router.add_api_route(_path, smart_configuration, methods=["GET"], summary="SMART configuration (discovery)")
