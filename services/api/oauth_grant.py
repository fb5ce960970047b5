"""The token endpoint's logic (``POST /oauth2/token``): the client credentials grant (RFC 6749 4.4) with the
client authenticated by a signed JWT assertion (``private_key_jwt``, RFC 7523; SMART Backend Services,
as NHS England's application-restricted APIs use) or by its secret (``client_secret_basic`` /
``client_secret_post``).

An assertion must be signed with the client's registered key (its PEM public key, or a key at its JWKS
URL, found by ``kid``), have ``iss`` and ``sub`` the client id, ``aud`` this endpoint's URL, an ``exp`` at
most five minutes ahead, and a ``jti`` never used before: each is kept in ``used_assertions`` until the
assertion expires, so a replay hits a duplicate key.

Errors are RFC 6749 section 5.2 JSON. A client that cannot be authenticated, including a bad assertion,
is ``invalid_client`` (401; RFC 7523 section 3.2 names that code for an invalid client assertion), a
missing or repeated parameter ``invalid_request``, another grant type ``unsupported_grant_type``, a scope
the client does not hold ``invalid_scope`` (400).

Every refusal is audited and refusals are limited per peer address (``token_guard.py``): ``admit`` before
any work, ``refused`` or ``granted`` after.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.audit import Hub
from shared.bearer import ASYMMETRIC, Authenticator
from shared.clients import PRIVATE_KEY_JWT, SECRET, ClientRecord, hash_secret, secret_matches
from shared.db_errors import safe_summary
from shared.jwks import JwksError
from shared.scopes import ScopeError, narrow
from shared.store import Store

from .token_guard import RefusalLimiter, login_failure, retry_after

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_AHEAD_S = 300
LEEWAY_S = 10


@dataclass
class OAuthError(Exception):
    """An RFC 6749 error answer."""

    error: str
    description: str
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)
    client_id: str | None = None  # the client the request claimed to be, for the audit trail
    audited: bool = True  # False for the repeated 429s of a throttled address (the first is recorded)

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _invalid_client(description: str, *, basic: bool = False) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="MSCC hub"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


class TokenEndpoint:
    """Grants access tokens. Built once per app over the app's ``Authenticator`` (its registry, JWKS
    cache and token service)."""

    def __init__(self, auth: Authenticator, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self._auth = auth
        self._used = store.used_assertions
        self._audit = store.audit
        self._clock = clock or (lambda: datetime.now(UTC))
        settings = auth.settings
        self.url = f"{settings.base_url}/oauth2/token"
        self.hub = Hub(settings.receiving_application, settings.receiving_facility, settings.base_url)
        self.guard = RefusalLimiter(settings.token_refusals_per_min, settings.token_refusals_burst)

    def admit(self, peer: str | None) -> None:
        """Take a refusal token of ``peer``'s bucket, or raise the 429 ``OAuthError`` (``Retry-After``)."""
        wait, first = self.guard.admit(peer or "")
        if wait > 0:
            after = retry_after(wait)
            raise OAuthError(
                "temporarily_unavailable",
                f"too many refused token requests from {peer or 'this address'}: try again in {after} s",
                429,
                {"Retry-After": after},
                audited=first,
            )

    def granted(self, peer: str | None) -> None:
        self.guard.granted(peer or "")

    async def refused(self, error: OAuthError, peer: str | None) -> None:
        """Record the refusal as an AuditEvent (never raises: the answer goes out whatever happens here)."""
        if not error.audited:
            return
        reason = f"{error.error}: {error.description}"
        claimed = error.client_id[:200] if error.client_id else None
        doc = login_failure(self.hub, self._clock(), peer, claimed, error.status, reason)
        try:
            await self._audit.insert_one(doc)
        except PyMongoError as exc:
            log.error("token refusal not audited", extra={"peer": peer, "client_id": claimed, **safe_summary(exc)})
        if error.status == 429:
            log.warning("token requests throttled", extra={"peer": peer, "client_id": claimed})

    async def grant(self, form: dict[str, list[str]], authorization: str | None) -> dict[str, Any]:
        """The token response for a parsed form body (each parameter's values) and Authorization header;
        an ``OAuthError`` names the client the request claimed to be."""
        try:
            return await self._grant(form, authorization)
        except OAuthError as exc:
            exc.client_id = exc.client_id or _claimed(form, authorization)
            raise

    async def _grant(self, form: dict[str, list[str]], authorization: str | None) -> dict[str, Any]:
        params = _single(form)
        grant_type = params.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required (client_credentials)")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant_type!r}: only client_credentials is supported"
            )
        client = await self._authenticate(params, authorization)
        if not client.active:
            raise _invalid_client(f"client {client.client_id} is revoked")
        try:
            scopes = narrow(params.get("scope"), client.scopes)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from exc
        issued = await self._auth.tokens.issue(client.client_id, client.ods_code, scopes)
        log.info("token issued", extra={"client_id": client.client_id, "scope": issued.scope})
        return {
            "access_token": issued.token,
            "token_type": "bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }

    async def _authenticate(self, params: dict[str, str], authorization: str | None) -> ClientRecord:
        basic = authorization is not None and authorization.strip().lower().startswith("basic ")
        assertion = "client_assertion" in params or "client_assertion_type" in params
        posted = "client_secret" in params
        if basic + assertion + posted > 1:
            raise OAuthError("invalid_request", "use one client authentication method, not several")
        if assertion:
            return await self._by_assertion(params)
        if basic:
            assert authorization is not None
            client_id, secret = _basic(authorization)
            if params.get("client_id", client_id) != client_id:
                raise OAuthError("invalid_request", "client_id differs from the one in the Authorization header")
            return await self._by_secret(client_id, secret, basic=True)
        if posted:
            if "client_id" not in params:
                raise OAuthError("invalid_request", "client_secret without client_id")
            return await self._by_secret(params["client_id"], params["client_secret"], basic=False)
        raise _invalid_client(
            "no client authentication: send a client_assertion (private_key_jwt), HTTP Basic, or client_id and "
            "client_secret"
        )

    async def _by_secret(self, client_id: str, secret: str, *, basic: bool) -> ClientRecord:
        client = await self._auth.clients.get(client_id)
        stored = client.secret_hash if client is not None and client.auth_method == SECRET else None
        matches = await asyncio.to_thread(secret_matches, secret, stored or _unknown_client_hash())
        if client is None or stored is None or not matches:
            raise _invalid_client(
                "unknown client, wrong secret, or a client that authenticates with a key", basic=basic
            )
        return client

    async def _by_assertion(self, params: dict[str, str]) -> ClientRecord:
        if params.get("client_assertion_type") != JWT_BEARER:
            raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
        assertion = params.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion is required")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            kid = jwt.get_unverified_header(assertion).get("kid")
        except jwt.InvalidTokenError as exc:
            raise _invalid_client(f"client_assertion is not a JWT: {exc}") from exc
        client_id = unverified.get("iss")
        client = await self._auth.clients.get(client_id) if isinstance(client_id, str) else None
        if client is None or client.auth_method != PRIVATE_KEY_JWT:
            raise _invalid_client("the assertion's iss is not a client registered with a key")
        if params.get("client_id", client.client_id) != client.client_id:
            raise OAuthError("invalid_request", "client_id differs from the assertion's iss")
        claims = await self._verified(assertion, client, kid)
        await self._first_use(client.client_id, claims)
        return client

    async def _verified(self, assertion: str, client: ClientRecord, kid: str | None) -> dict[str, Any]:
        try:
            if client.jwks_url:
                key: Any = await self._auth.jwks.key(client.jwks_url, kid)
            else:
                assert client.public_key_pem is not None
                key = load_pem_public_key(client.public_key_pem.encode())
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=ASYMMETRIC,
                audience=self.url,
                issuer=client.client_id,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "sub", "aud", "jti"]},
            )
        except JwksError as exc:
            raise _invalid_client(f"the client's keys could not be read: {exc}") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid_client(f"the assertion's aud must be {self.url}") from exc
        except jwt.InvalidTokenError as exc:
            raise _invalid_client(f"the client assertion is not valid: {exc}") from exc
        if claims["sub"] != client.client_id:
            raise _invalid_client("the assertion's sub must be the client id (the same as iss)")
        if claims["exp"] > time.time() + MAX_ASSERTION_AHEAD_S + LEEWAY_S:
            raise _invalid_client("the assertion's exp is more than 5 minutes ahead")
        return claims

    async def _first_use(self, client_id: str, claims: dict[str, Any]) -> None:
        """Record the assertion's jti until it expires; ``invalid_client`` when it was used before."""
        expires = datetime.fromtimestamp(int(claims["exp"]) + LEEWAY_S, UTC)
        try:
            await self._used.insert_one({"_id": f"{client_id}:{claims['jti']}", "expires_at": expires})
        except DuplicateKeyError as exc:
            raise _invalid_client("the assertion's jti was used before: sign a new assertion per request") from exc


@functools.cache
def _unknown_client_hash() -> dict[str, Any]:
    """Checked against when the client id is unknown, so that takes as long to refuse as a wrong secret."""
    return hash_secret("not the secret of any client")


def _claimed(form: dict[str, list[str]], authorization: str | None) -> str | None:
    """The client id a request names (form, HTTP Basic or the assertion's ``iss``), unverified; None."""
    if form.get("client_id"):
        return form["client_id"][0]
    if authorization and authorization.strip().lower().startswith("basic "):
        try:
            return _basic(authorization)[0] or None
        except OAuthError:
            return None
    assertion = (form.get("client_assertion") or [""])[0]
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss") if assertion else None
    except jwt.InvalidTokenError:
        return None
    return issuer if isinstance(issuer, str) else None


def _single(form: dict[str, list[str]]) -> dict[str, str]:
    repeated = sorted(name for name, values in form.items() if len(values) > 1)
    if repeated:
        raise OAuthError("invalid_request", f"parameter(s) given more than once: {', '.join(repeated)}")
    return {name: values[0] for name, values in form.items()}


def _basic(authorization: str) -> tuple[str, str]:
    """Client id and secret from HTTP Basic (each form-urlencoded first, RFC 6749 section 2.3.1)."""
    try:
        decoded = base64.b64decode(authorization.strip()[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _invalid_client("the Authorization header is not valid HTTP Basic", basic=True) from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("the Authorization header is not valid HTTP Basic", basic=True)
    return unquote_plus(client_id), unquote_plus(secret)
