"""Stopping a hub process in order: one signal handler, and an HTTP server that leaves signals to it.

uvicorn installs its own SIGINT/SIGTERM handlers and, once it has stopped, raises the signal again so
that the default action runs: for SIGTERM (what docker and systemd send) that ended the process with
status 143 before the MLLP listener, the mapper, the notifier and the local MongoDB had stopped. Here
the process has one handler, which sets a stop event; everything stops from it, in order, and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn


class QuietServer(uvicorn.Server):
    """A uvicorn server that neither handles signals nor raises them again: ``serve_until`` stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then finish the requests in flight and return."""
        serving = asyncio.create_task(self.serve(), name="http")
        waiting = asyncio.create_task(stop.wait(), name="http-stop")
        try:
            await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.should_exit = True
            waiting.cancel()
            await serving
