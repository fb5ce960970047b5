"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from services.api.app import create_app
from services.intake.service import IntakeService
from shared.settings import Settings
from shared.store import Store


@contextlib.asynccontextmanager
async def app_client(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for an intake app built with ``settings`` (no MLLP listener), stopped on exit."""
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            yield client
    finally:
        await service.stop()
