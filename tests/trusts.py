"""Calling the API as a given organisation: ``client_as(app_or_http, ods, scopes)``.

Every authorisation test goes through this one helper. It registers an API client of organisation
``ods`` with ``scopes`` in the app's store and gets it a real access token from the app's token endpoint
(``tokens.headers_for``), then gives an httpx client whose every request carries that token. Clients of
several organisations can call one app side by side::

    async with client_as(http, "RBL") as rbl, client_as(http, MSCC) as mscc:
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import httpx
from fastapi import FastAPI
from tokens import headers_for

MSCC = "REN"  # the hub's own organisation in the test settings (MSCC_RECEIVING_FACILITY's default)
# Everything on every FHIR type, and HL7v2 over HTTP: what is refused here is refused by organisation.
ALL_SCOPES = ("system/*.cruds", "system/hl7v2.c")


def _app(app_or_http: FastAPI | httpx.AsyncClient) -> FastAPI:
    if isinstance(app_or_http, FastAPI):
        return app_or_http
    transport = app_or_http._transport
    assert isinstance(transport, httpx.ASGITransport), "client_as needs a client of the in-process app"
    app = transport.app
    assert isinstance(app, FastAPI)
    return app


@contextlib.asynccontextmanager
async def client_as(
    app_or_http: FastAPI | httpx.AsyncClient, ods: str, scopes: Iterable[str] = ALL_SCOPES
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling the app (or the app behind the in-process client ``app_or_http``) with a
    real token of a client of organisation ``ods`` granted ``scopes``."""
    app = _app(app_or_http)
    store, settings = app.state.api.store, app.state.settings
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        client.headers.update(await headers_for(client, store, settings, ods, list(scopes)))
        yield client
