"""The caller of an HTTP request, from its ``Authorization: Bearer`` token (RFC 6750).

Two kinds of token are accepted, told apart by their (then verified) issuer:

- the hub's own, from ``/oauth2/token`` (``shared/tokens.py``): signature, issuer, audience and expiry
  checked, and the client must still be active (``ClientStates``: a revoked client's tokens stop
  working within ``MSCC_AUTH_CLIENT_CACHE_S``);
- an external identity provider's, when ``MSCC_IDP_ISSUER`` and ``MSCC_IDP_JWKS_URL`` are set: signed by
  a key published at that JWKS URL, for the audience ``MSCC_IDP_AUDIENCE`` (default: the hub's base
  URL), carrying the ODS code in the claim ``MSCC_IDP_ODS_CLAIM`` and the scopes in ``scope`` or ``scp``.

No Authorization header at all is the development client's case (``shared.auth.dev_caller_for_http``).
Every refusal is ``Unauthenticated`` with a reason the 401 answer carries.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt

from .auth import Caller, Unauthenticated, dev_caller_for_http
from .clients import ClientRegistry, ClientStates
from .jwks import JwksCache, JwksError
from .settings import Settings
from .store import Store
from .tokens import LEEWAY_S, HubTokens

log = logging.getLogger(__name__)

# Signature algorithms accepted from outside (identity providers, client assertions): asymmetric only.
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


class Authenticator:
    """Resolves HTTP callers. Create once per app (``app.state.auth``) and pass it down; it holds the
    hub's token service, the client registry and the JWKS cache that the token endpoint uses too."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.tokens = HubTokens(settings, store)
        self.clients = ClientRegistry(store)
        self.states = ClientStates(self.clients, settings.auth_client_cache_s)
        self.jwks = JwksCache(
            settings.jwks_cache_s, settings.jwks_timeout_s, allow_http=settings.environment != "production"
        )

    async def http_caller(self, authorization: str | None, peer_host: str | None) -> Caller:
        """The caller behind ``authorization`` (the header's value, None when absent) from ``peer_host``."""
        if authorization is None:
            return dev_caller_for_http(self.settings, peer_host)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Unauthenticated("the Authorization header is not 'Bearer <token>'", token_given=True)
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT: {exc}", token_given=True) from exc
        if issuer == self.tokens.issuer:
            return await self._hub_caller(token)
        if self.settings.idp_issuer is not None and issuer == self.settings.idp_issuer:
            return await self._idp_caller(token)
        raise Unauthenticated(f"the bearer token's issuer {issuer!r} is not trusted", token_given=True)

    async def _hub_caller(self, token: str) -> Caller:
        try:
            claims = await self.tokens.verify(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}", token_given=True) from exc
        client_id = str(claims["sub"])
        if not await self.states.active(client_id):
            raise Unauthenticated(f"client {client_id} is revoked or unknown", token_given=True)
        return Caller(client_id, str(claims["ods_code"]), frozenset(str(claims["scope"]).split()))

    async def _idp_caller(self, token: str) -> Caller:
        settings = self.settings
        assert settings.idp_jwks_url is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self.jwks.key(settings.idp_jwks_url, kid)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ASYMMETRIC,
                issuer=settings.idp_issuer,
                audience=settings.idp_audience or settings.base_url,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub"]},
            )
        except JwksError as exc:
            log.warning("identity provider keys unavailable", extra={"reason": str(exc)})
            raise Unauthenticated(f"the bearer token cannot be checked: {exc}", token_given=True) from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}", token_given=True) from exc
        ods = claims.get(settings.idp_ods_claim)
        if not isinstance(ods, str) or not ods.strip():
            raise Unauthenticated(
                f"the bearer token has no ODS code (claim {settings.idp_ods_claim!r})", token_given=True
            )
        client_id = claims.get("client_id") or claims.get("azp") or claims["sub"]
        return Caller(str(client_id), ods.strip().upper(), frozenset(_scopes(claims)))


def _scopes(claims: dict[str, Any]) -> list[str]:
    value = claims.get("scope", claims.get("scp", ""))
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()
