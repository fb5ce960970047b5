"""OAuth 2.0 client credentials for a replay over HTTP: a bearer token from ``{URL}/oauth2/token``,
renewed before it expires.

The client authenticates as the hub's token endpoint expects (docs/security.md): with its secret (HTTP
Basic), or with ``private_key_jwt``: an assertion signed by its private key (ES256 for an EC P-256 key,
RS256 for RSA) with ``iss`` = ``sub`` = the client id, ``aud`` the token endpoint's URL, a one-minute
``exp`` and a fresh ``jti``. Without credentials no Authorization header is sent: on the hub's own
machine, in development, that is the development client.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .files import UsageError
from .outcomes import reason_of

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RENEW_MARGIN_S = 30.0  # renew this long before expiry (or at 80 % of a lifetime under 150 s)


class AuthError(Exception):
    """The token endpoint refused the client (a hub that cannot be reached is a ``ConnectionError``)."""


@dataclass(frozen=True)
class Credentials:
    """A client id with its secret or its private key (and the key id a JWKS client's key has)."""

    client_id: str
    secret: str | None = None
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
    key_id: str | None = None
    scope: str | None = None

    @property
    def algorithm(self) -> str:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
                self.private_key.curve.name, "ES256"
            )
        return "RS256"


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """The PEM private key in ``path`` (``UsageError`` naming what is wrong with it)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(f"--private-key {path}: cannot be read ({exc.strerror or exc})") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--private-key {path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UsageError(f"--private-key {path}: give an EC or RSA private key")
    return key


class TokenSource:
    """The current access token for ``credentials``; asks the token endpoint again before it expires."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._clock = clock
        self.url = f"{base_url}/oauth2/token"
        self._credentials = credentials
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.issued = 0  # tokens obtained so far

    async def header(self) -> dict[str, str]:
        if self._clock() >= self._renew_at:
            async with self._lock:
                if self._clock() >= self._renew_at:
                    await self._fetch()
        return {"Authorization": f"Bearer {self._token}"}

    def expire(self) -> None:
        """Forget the token (the hub answered 401): the next request gets a new one."""
        self._renew_at = 0.0

    def _form(self) -> tuple[dict[str, str], dict[str, str]]:
        creds = self._credentials
        form = {"grant_type": "client_credentials"}
        if creds.scope:
            form["scope"] = creds.scope
        if creds.private_key is None:
            basic = base64.b64encode(f"{creds.client_id}:{creds.secret or ''}".encode()).decode()
            return form, {"Authorization": f"Basic {basic}"}
        now = int(time.time())
        claims = {
            "iss": creds.client_id,
            "sub": creds.client_id,
            "aud": self.url,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": creds.key_id} if creds.key_id else None
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = jwt.encode(claims, creds.private_key, algorithm=creds.algorithm, headers=headers)
        return form, {}

    async def _fetch(self) -> None:
        form, headers = self._form()
        try:
            async with self._session.post(self.url, data=form, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise AuthError(f"{self.url} refused the client ({response.status}): {reason_of(body)}")
                answer = await response.json(content_type=None)
        except ValueError as exc:
            raise AuthError(f"{self.url} answered with no JSON token ({exc})") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = exc or type(exc).__name__
            raise ConnectionError(f"{self.url}: no token ({cause}): is the hub running? check --http") from exc
        if not isinstance(answer, dict) or not answer.get("access_token"):
            raise AuthError(f"{self.url} answered without an access_token")
        lifetime = float(answer.get("expires_in") or 300)
        self._token = str(answer["access_token"])
        self._renew_at = self._clock() + max(1.0, lifetime - min(RENEW_MARGIN_S, lifetime * 0.2))
        self.issued += 1
