"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn

from services.api.app import create_app
from services.intake.service import IntakeService
from services.serving import QuietServer
from shared.mllp import MllpClient
from shared.mongod import free_port
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


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a loopback port (``port``, or a free one) until the block ends, when
    the requests in flight finish first; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", access_log=False)
    server = QuietServer(config)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve_until(stop))
    for _ in range(500):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the hub did not start serving"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await serving


def on_free_port(settings: Settings) -> Settings:
    """``settings`` whose public base URL is a free loopback port's, for a hub ``serve_hub`` serves there:
    the links the hub writes, and the audience of client assertions, then lead back to it."""
    return settings.model_copy(update={"public_base_url": f"http://127.0.0.1:{free_port()}"})


@contextlib.asynccontextmanager
async def serve_hub(intake: IntakeService) -> AsyncIterator[str]:
    """Intake's HTTP application served by uvicorn at the address ``on_free_port`` gave its settings, until
    the block ends; yields that base URL."""
    public = urlsplit(intake.settings.public_base_url or "")
    assert public.hostname == "127.0.0.1" and public.port, "serve_hub serves intake built from on_free_port"
    async with serve_app(create_app(intake), public.port) as url:
        yield url


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def mllp_reply(intake: IntakeService, message: bytes, timeout_s: float = 60) -> bytes:
    """What intake's MLLP listener answers to ``message``, sent on a connection of its own."""
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=timeout_s)
    try:
        return await client.send(message)
    finally:
        await client.close()
