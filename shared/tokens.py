"""The hub's own access tokens: short-lived JWTs signed with the hub's key, and that key.

The key comes from the PEM file ``MSCC_TOKEN_SIGNING_KEY_FILE`` (an EC P-256 key signs ES256, an RSA key
RS256) or, when none is configured, from the ``signing_keys`` collection: the first process to start
generates an EC P-256 key and inserts it under a fixed ``_id``; a process that loses that race reads the
winner's. So every process of the hub, and every restart, signs and verifies with the same key, and a
token one process issued is good at all of them. Its public half is published at ``/oauth2/jwks``.

Claims: ``iss`` and ``aud`` the hub's base URL, ``sub`` and ``client_id`` the client, ``ods_code``,
``scope`` (space-separated), ``iat``, ``exp``, ``jti``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pymongo.errors import DuplicateKeyError

from .settings import Settings
from .store import Store

KEY_ID = "access-tokens"
LEEWAY_S = 5


@dataclass(frozen=True)
class SigningKey:
    """The hub's private key, its JWS algorithm and key id (the RFC 7638 thumbprint of its public key)."""

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    algorithm: str
    kid: str

    @property
    def public(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, for ``/oauth2/jwks``."""
        return {**_public_jwk(self.public), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def _public_jwk(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    return jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)


def _thumbprint(jwk: dict[str, Any]) -> str:
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def signing_key(pem: bytes) -> SigningKey:
    """The signing key a PEM private key gives (``ValueError`` for another kind of key)."""
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        algorithm = "ES256"
    elif isinstance(private, rsa.RSAPrivateKey) and private.key_size >= 2048:
        algorithm = "RS256"
    else:
        raise ValueError("the token signing key must be an EC P-256 key or an RSA key of at least 2048 bits")
    return SigningKey(private, algorithm, _thumbprint(_public_jwk(private.public_key())))


def _new_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def load_signing_key(settings: Settings, store: Store) -> SigningKey:
    """The configured key file's key, else the one kept in MongoDB (created when there is none yet)."""
    if settings.token_signing_key_file is not None:
        pem = await asyncio.to_thread(settings.token_signing_key_file.read_bytes)
        return signing_key(pem)
    doc = await store.signing_keys.find_one({"_id": KEY_ID})
    if doc is None:
        fresh: dict[str, Any] = {"_id": KEY_ID, "pem": _new_pem().decode(), "created_at": datetime.now(UTC)}
        try:
            await store.signing_keys.insert_one(fresh)
            doc = fresh
        except DuplicateKeyError:  # another process created it first: use that one
            doc = await store.signing_keys.find_one({"_id": KEY_ID})
            assert doc is not None
    return signing_key(str(doc["pem"]).encode())


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    scope: str


class HubTokens:
    """Issues and verifies the hub's access tokens. Create once per process (the key is loaded on first
    use, so building an app does no I/O)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._key: SigningKey | None = None
        self._lock = asyncio.Lock()
        self.issuer = settings.base_url

    async def key(self) -> SigningKey:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = await load_signing_key(self._settings, self._store)
        return self._key

    async def issue(self, client_id: str, ods_code: str, scopes: list[str], *, now: float | None = None) -> Issued:
        key = await self.key()
        issued_at = int(time.time() if now is None else now)
        lifetime = self._settings.token_lifetime_s
        scope = " ".join(scopes)
        claims = {
            "iss": self.issuer,
            "aud": self.issuer,
            "sub": client_id,
            "client_id": client_id,
            "ods_code": ods_code,
            "scope": scope,
            "iat": issued_at,
            "exp": issued_at + lifetime,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})
        return Issued(token, lifetime, scope)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of one of the hub's tokens; ``jwt.InvalidTokenError`` saying what is wrong."""
        key = await self.key()
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public,
            algorithms=[key.algorithm],
            issuer=self.issuer,
            audience=self.issuer,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "jti", "scope", "ods_code"]},
        )
        return claims

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [(await self.key()).jwk()]}
