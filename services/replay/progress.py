"""Pace and progress: ``--rate`` as an even schedule shared by every connection, and the progress line.

The pacer gives each send a slot ``1/rate`` seconds after the previous one, whichever connection sends
it, so the rate is smooth (no bursts at the start of each second) and holds however many connections
there are. The progress line (count, rate, ETA from the bytes read so far) goes to stderr, rewritten in
place twice a second, only when stderr is a terminal: logs and pipes get the summary alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from .readers import Reading
from .summary import Summary


class Pacer:
    """At most ``rate`` sends a second, evenly spaced; no limit when ``rate`` is None."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Progress:
    """The progress line: messages answered, their rate, and the time left by the share of bytes read."""

    def __init__(self, summary: Summary, reading: Reading, stream: TextIO, enabled: bool) -> None:
        self._summary = summary
        self._reading = reading
        self._stream = stream
        self.enabled = enabled
        self._started = time.monotonic()
        self._shown = False

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        done = self._summary.messages
        rate = done / elapsed if elapsed > 0 else 0.0
        read, total = self._reading.done, self._reading.total
        if 0 < read < total and elapsed > 0:
            eta = f"ETA {_clock(elapsed * (total - read) / read)}"
        else:
            eta = "ETA -" if read < total else "ETA 0:00"
        failed = self._summary.failed
        share = f"{100 * read / total:.0f}%" if total else "-"
        return f"{done} messages ({failed} failed), {rate:.0f} msg/s, {share} read, {eta}"

    def show(self) -> None:
        if self.enabled:
            self._stream.write(f"\r\x1b[K{self.line()}")
            self._stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    async def run(self) -> None:
        """Refresh the line until cancelled."""
        while True:
            self.show()
            await asyncio.sleep(0.5)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
