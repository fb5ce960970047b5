"""The process's one aiohttp session for rest-hook deliveries, made in a start-up hook and closed on exit.

Its resolver is ``GuardedResolver``: whatever a subscription's host resolves to at connection time must
still pass the endpoint policy (no loopback, link-local or private address unless allowed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from shared.settings import Settings

from .endpoints import EndpointPolicy, GuardedResolver


@contextlib.asynccontextmanager
async def client_session(settings: Settings, *, limit: int = 256) -> AsyncIterator[aiohttp.ClientSession]:
    """An ``aiohttp.ClientSession`` for notifications: pooled keep-alive connections, the guarded
    resolver, no cookies kept between receivers, and no proxy from the environment."""
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=max(1, settings.notifier_lanes),
        resolver=GuardedResolver(EndpointPolicy.from_settings(settings)),
        ttl_dns_cache=60,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": "mscc-hub-notifier"},
    ) as session:
        yield session
