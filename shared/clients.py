"""The hub's API clients: who may ask ``/oauth2/token`` for an access token, in the ``clients`` collection.

A client has a generated id, a unique name (what operators type: ``mscc clients revoke NAME``), the ODS
code of the organisation it acts for, the SMART scopes it may be granted (``shared/scopes.py``), and one
way to authenticate:

- ``private_key_jwt``: a signed JWT assertion, checked against its registered public key (PEM) or the
  keys at its JWKS URL. The hub holds no secret of such a client: the preferred way.
- ``client_secret``: a secret shown once when registered or rotated. Only its scrypt hash (random salt)
  is stored; a presented secret is hashed the same way and compared in constant time.

Revoking a client keeps its record (``revoked_at``): it gets no token and its unexpired tokens stop
working within ``MSCC_AUTH_CLIENT_CACHE_S`` (``ClientStates``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pymongo.errors import DuplicateKeyError

from .scopes import ScopeError, checked
from .store import Document, Store

SECRET = "client_secret"
PRIVATE_KEY_JWT = "private_key_jwt"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ODS = re.compile(r"^[A-Z0-9]{3,10}$")
# scrypt cost: 16 MiB and some tens of milliseconds per check, run off the event loop.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class ClientError(ValueError):
    """A registration the hub refuses, or a client that does not exist; the text says what to fix."""


def hash_secret(secret: str) -> dict[str, Any]:
    """The stored form of ``secret``: scrypt with a random salt and its parameters."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return {"alg": "scrypt", "salt": salt.hex(), "hash": digest.hex(), **_SCRYPT}


def secret_matches(secret: str, stored: dict[str, Any]) -> bool:
    """Whether ``secret`` is the one ``stored`` was made from (constant-time comparison)."""
    if stored.get("alg") != "scrypt":
        return False
    digest = hashlib.scrypt(
        secret.encode(), salt=bytes.fromhex(stored["salt"]), dklen=32, n=stored["n"], r=stored["r"], p=stored["p"]
    )
    return hmac.compare_digest(digest, bytes.fromhex(stored["hash"]))


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ClientRecord:
    """One registered client, as stored (``_id`` is the client id)."""

    client_id: str
    name: str
    ods_code: str
    scopes: tuple[str, ...]
    auth_method: str
    created_at: datetime
    secret_hash: dict[str, Any] | None = None
    public_key_pem: str | None = None
    jwks_url: str | None = None
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def key_source(self) -> str:
        """Where the client's assertion keys come from, for listings."""
        if self.auth_method == SECRET:
            return "secret"
        return f"jwks {self.jwks_url}" if self.jwks_url else "public key"

    @classmethod
    def from_doc(cls, doc: Document) -> ClientRecord:
        known = {
            "_id", "name", "ods_code", "scopes", "auth_method", "created_at", "secret_hash",
            "public_key_pem", "jwks_url", "revoked_at", "rotated_at",
        }  # fmt: skip
        return cls(
            client_id=doc["_id"],
            name=doc["name"],
            ods_code=doc["ods_code"],
            scopes=tuple(doc.get("scopes", ())),
            auth_method=doc["auth_method"],
            created_at=doc["created_at"],
            secret_hash=doc.get("secret_hash"),
            public_key_pem=doc.get("public_key_pem"),
            jwks_url=doc.get("jwks_url"),
            revoked_at=doc.get("revoked_at"),
            rotated_at=doc.get("rotated_at"),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def to_doc(self) -> Document:
        doc: Document = {
            "_id": self.client_id,
            "name": self.name,
            "ods_code": self.ods_code,
            "scopes": list(self.scopes),
            "auth_method": self.auth_method,
            "created_at": self.created_at,
        }
        optional = {
            "secret_hash": self.secret_hash,
            "public_key_pem": self.public_key_pem,
            "jwks_url": self.jwks_url,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        doc.update(self.extra)
        return doc

    def summary(self) -> dict[str, Any]:
        """What ``mscc clients list --json`` shows: never the secret's hash nor the key itself."""
        return {
            "name": self.name,
            "client_id": self.client_id,
            "ods_code": self.ods_code,
            "scopes": list(self.scopes),
            "auth_method": self.auth_method,
            "keys": self.key_source,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "revoked_at": self.revoked_at.isoformat(timespec="seconds") if self.revoked_at else None,
        }


def _checked_registration(name: str, ods_code: str, scopes: list[str], public_key_pem: str | None) -> str:
    if not _NAME.match(name):
        raise ClientError(f"client name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    if not _ODS.match(ods_code):
        raise ClientError(f"ODS code {ods_code!r}: 3 to 10 upper-case letters or digits, such as RBL or A81001")
    if not scopes:
        raise ClientError("give at least one scope (--scope system/ServiceRequest.rs, see docs/security.md)")
    try:
        checked(scopes)
    except ScopeError as exc:
        raise ClientError(str(exc)) from exc
    if public_key_pem is not None:
        try:
            load_pem_public_key(public_key_pem.encode())
        except ValueError as exc:
            raise ClientError(f"the public key is not a PEM public key (RSA or EC): {exc}") from exc
    return ods_code


class ClientRegistry:
    """Registering, finding, revoking and rotating clients (the CLI and the token endpoint use it)."""

    def __init__(self, store: Store) -> None:
        self._clients = store.clients

    async def add(
        self,
        name: str,
        ods_code: str,
        scopes: list[str],
        *,
        public_key_pem: str | None = None,
        jwks_url: str | None = None,
    ) -> tuple[ClientRecord, str | None]:
        """Register a client; its secret (None for a key client), shown once. ``ClientError`` when refused."""
        ods_code = _checked_registration(name, ods_code.strip().upper(), scopes, public_key_pem)
        if public_key_pem and jwks_url:
            raise ClientError("give a public key or a JWKS URL, not both")
        if jwks_url is not None and not jwks_url.startswith(("https://", "http://")):
            raise ClientError(f"JWKS URL {jwks_url!r} is not an http(s) URL")
        secret = None if (public_key_pem or jwks_url) else new_secret()
        record = ClientRecord(
            client_id=uuid.uuid4().hex,
            name=name,
            ods_code=ods_code,
            scopes=tuple(checked(scopes)),
            auth_method=SECRET if secret else PRIVATE_KEY_JWT,
            created_at=datetime.now(UTC),
            secret_hash=await asyncio.to_thread(hash_secret, secret) if secret else None,
            public_key_pem=public_key_pem,
            jwks_url=jwks_url,
        )
        try:
            await self._clients.insert_one(record.to_doc())
        except DuplicateKeyError as exc:
            raise ClientError(f"a client named {name!r} exists already (see 'mscc clients list')") from exc
        return record, secret

    async def get(self, client_id: str) -> ClientRecord | None:
        doc = await self._clients.find_one({"_id": client_id})
        return ClientRecord.from_doc(doc) if doc else None

    async def named(self, name: str) -> ClientRecord:
        doc = await self._clients.find_one({"name": name})
        if doc is None:
            raise ClientError(f"no client named {name!r} (see 'mscc clients list')")
        return ClientRecord.from_doc(doc)

    async def all(self) -> list[ClientRecord]:
        return [ClientRecord.from_doc(doc) async for doc in self._clients.find({}).sort("name", 1)]

    async def revoke(self, name: str) -> ClientRecord:
        """Revoke the client named ``name`` (again: no change); it gets no more tokens."""
        record = await self.named(name)
        if record.active:
            await self._clients.update_one(
                {"_id": record.client_id, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(UTC)}}
            )
        return await self.named(name)

    async def rotate(self, name: str) -> tuple[ClientRecord, str]:
        """A new secret for a secret client; the old one stops working at once."""
        record = await self.named(name)
        if record.auth_method != SECRET:
            raise ClientError(f"client {name!r} authenticates with a key, not a secret: register its new key instead")
        if not record.active:
            raise ClientError(f"client {name!r} is revoked")
        secret = new_secret()
        stored = await asyncio.to_thread(hash_secret, secret)
        await self._clients.update_one(
            {"_id": record.client_id}, {"$set": {"secret_hash": stored, "rotated_at": datetime.now(UTC)}}
        )
        return await self.named(name), secret


class ClientStates:
    """Whether a client is still active, read from the database at most every ``ttl_s`` per client: a
    bearer token is checked against it on every request, so a revocation is seen within ``ttl_s``."""

    def __init__(self, registry: ClientRegistry, ttl_s: float) -> None:
        self._registry = registry
        self._ttl = ttl_s
        self._seen: dict[str, tuple[float, bool]] = {}

    async def active(self, client_id: str) -> bool:
        now = time.monotonic()
        cached = self._seen.get(client_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        record = await self._registry.get(client_id)
        state = record is not None and record.active
        self._seen[client_id] = (now, state)
        return state
