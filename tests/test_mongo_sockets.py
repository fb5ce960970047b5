"""A MongoDB connect that is cancelled closes its socket at once (shared/mongo_sockets.py).

The server here never answers the connect (as a host that drops packets, or a refusal the event loop has
not read yet), so the connect is still in progress when it is cancelled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient, pool_shared
from pymongo.pool_options import PoolOptions

import shared.store  # noqa: F401 - installs the correction, as every process of the hub does
from shared.store import Document


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[list[socket.socket], asyncio.Event]]:
    """The sockets pymongo connects, on a loop whose connects never complete; the event is set at the first."""
    opened: list[socket.socket] = []
    connecting = asyncio.Event()

    async def never_answered(sock: socket.socket, address: object) -> None:
        opened.append(sock)
        connecting.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.get_running_loop(), "sock_connect", never_answered)
    yield opened, connecting


async def test_a_cancelled_connect_closes_its_socket(connects: tuple[list[socket.socket], asyncio.Event]) -> None:
    opened, connecting = connects
    attempt = asyncio.create_task(pool_shared._async_create_connection(("127.0.0.1", 9), PoolOptions()))
    await connecting.wait()
    attempt.cancel()  # as asyncio.wait_for does when a probe's time limit ends
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert len(opened) == 1
    assert opened[0].fileno() == -1, "the socket is left for the garbage collector"


async def test_closing_a_client_while_its_monitor_connects_leaves_no_socket_open(
    connects: tuple[list[socket.socket], asyncio.Event],
) -> None:
    opened, connecting = connects
    client: AsyncMongoClient[Document] = AsyncMongoClient("mongodb://127.0.0.1:9/?directConnection=true")
    await client.aconnect()  # the monitor starts connecting
    await connecting.wait()
    await client.close()  # cancels the monitor mid-connect
    assert opened and all(sock.fileno() == -1 for sock in opened)
