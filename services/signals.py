"""SIGINT and SIGTERM stop a hub process cleanly, from its first moment to its last.

A long-running part (``mscc run``, ``intake``, ``mapper``, ``notifier``) calls ``hold_stop_signals`` as soon
as it knows it will serve: from then on a stop signal is remembered, not fatal (before, a SIGTERM that came
while the process was still starting - the database, the schema - ended it with status 143, skipping every
clean-up). Once the event loop runs, ``stop_on_signals`` hands the signals to it: they set the stop event,
and one remembered from the start sets it at once, so the process stops in order and exits 0.

A signal during the first imports (before ``main`` runs) still ends the process at once: nothing is
started by then.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def hold_stop_signals() -> None:
    """Remember SIGINT and SIGTERM until ``stop_on_signals`` takes them over (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)


def stop_requested() -> bool:
    """Whether a stop signal came while it was held."""
    return bool(_received)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (from the running loop); one that came while held sets it now; a
    second signal changes nothing more."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if _received:
        stop.set()
