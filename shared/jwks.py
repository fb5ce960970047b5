"""Public keys published at JWKS URLs (a client's for its assertions, an identity provider's for its tokens),
fetched without blocking the event loop and kept for ``MSCC_JWKS_CACHE_S``.

A key id the cached set does not hold makes the set be fetched again (the publisher may have rotated its
keys), at most once per ``REFETCH_S`` per URL, so tokens naming unknown key ids cannot make the hub hammer
the publisher. Each fetch opens its own short HTTP session: fetches are rare, and nothing needs closing
when the process stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKSetError

REFETCH_S = 30.0
MAX_JWKS_BYTES = 256 * 1024


class JwksError(Exception):
    """The keys could not be fetched or read, or none has the key id asked for."""


@dataclass
class _Entry:
    keys: PyJWKSet
    fetched: float


class JwksCache:
    """Key sets by URL. Create once per process and pass it down."""

    def __init__(self, ttl_s: float, timeout_s: float, *, allow_http: bool) -> None:
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._allow_http = allow_http
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, url: str, kid: str | None) -> PyJWK:
        """The key ``kid`` (or the only key, when the token names none) published at ``url``."""
        entry = await self._entry(url, refresh=False)
        found = _find(entry.keys, kid)
        if found is None and time.monotonic() - entry.fetched >= REFETCH_S:
            entry = await self._entry(url, refresh=True)
            found = _find(entry.keys, kid)
        if found is None:
            named = f"key id {kid!r}" if kid else "a key id (the set holds several keys)"
            raise JwksError(f"the keys at {url} have no {named}")
        return found

    async def _entry(self, url: str, *, refresh: bool) -> _Entry:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self._entries.get(url)
            now = time.monotonic()
            fresh = entry is not None and now - entry.fetched < self._ttl
            if entry is not None and fresh and not (refresh and now - entry.fetched >= REFETCH_S):
                return entry
            entry = _Entry(_key_set(await self._fetch(url), url), time.monotonic())
            self._entries[url] = entry
            return entry

    async def _fetch(self, url: str) -> dict[str, Any]:
        if not url.startswith("https://") and not (self._allow_http and url.startswith("http://")):
            raise JwksError(f"JWKS URL {url} is not https")
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
                if response.status != 200:
                    raise JwksError(f"fetching the keys at {url} answered HTTP {response.status}")
                body = await response.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"the key set at {url} is larger than {MAX_JWKS_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"the keys at {url} could not be fetched: {exc or type(exc).__name__}") from exc
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise JwksError(f"the document at {url} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise JwksError(f"the document at {url} is not a JWK set")
        return data


def _key_set(data: dict[str, Any], url: str) -> PyJWKSet:
    try:
        return PyJWKSet.from_dict(data)
    except PyJWKSetError as exc:
        raise JwksError(f"the document at {url} holds no usable key: {exc}") from exc


def _find(keys: PyJWKSet, kid: str | None) -> PyJWK | None:
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((key for key in keys.keys if key.key_id == kid), None)
