"""A MongoDB connect that is cancelled closes its socket at once.

pymongo 4.13's asyncio connect (``pymongo.pool_shared._async_create_connection``) closes its socket when
the connect fails or times out, but not when the task awaiting it is cancelled: ``client.close()`` stopping
a monitor that is reconnecting to a server that went away, or a ``/readyz`` or ``/metrics`` probe whose
time limit ends while a pool connection is being opened. The socket, already refused or still connecting,
then stays open (a file descriptor) until the garbage collector reaches the traceback that holds it, and
the collector's ``ResourceWarning`` is raised wherever that happens to be (PYTHON-5867, fixed upstream in
mongodb/mongo-python-driver#2858, after the 4.13 line the hub is pinned to: it still speaks to MongoDB 4.0).

``install()`` wraps that function once per process (``shared.store`` calls it on import): whatever ends
the connect early, the socket the connect had opened is closed before the exception goes on.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine, Iterator
from types import CodeType, TracebackType
from typing import Any

from pymongo import pool_shared
from pymongo.pool_options import PoolOptions

Address = tuple[str, int | None]
Connect = Callable[[Address, PoolOptions], Coroutine[Any, Any, socket.socket]]


def _sockets_left_open(code: CodeType, tb: TracebackType | None) -> Iterator[socket.socket]:
    """The ``sock`` of each frame of ``code`` that the exception passed through."""
    while tb is not None:
        if tb.tb_frame.f_code is code:
            sock = tb.tb_frame.f_locals.get("sock")
            if isinstance(sock, socket.socket):
                yield sock
        tb = tb.tb_next


def closing_on_exit(connect: Connect) -> Connect:
    """``connect``, whose socket is closed when it ends with an exception (a cancellation included)."""
    code = connect.__code__

    async def create_connection(address: Address, options: PoolOptions) -> socket.socket:
        try:
            return await connect(address, options)
        except BaseException as exc:
            for sock in _sockets_left_open(code, exc.__traceback__):
                sock.close()  # already closed when the connect failed or timed out: closing again is harmless
            raise

    create_connection.__wrapped__ = connect  # type: ignore[attr-defined]
    return create_connection


def install() -> None:
    """Wrap pymongo's asyncio connect (once; a pymongo without that function is left alone)."""
    current: Connect | None = getattr(pool_shared, "_async_create_connection", None)
    if current is not None and not hasattr(current, "__wrapped__"):
        pool_shared._async_create_connection = closing_on_exit(current)  # type: ignore[assignment]
