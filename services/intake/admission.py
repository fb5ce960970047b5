"""How long an MLLP connection may take: idle between frames, stalled inside one, and a frame in total.

Between frames a connection may be silent ``MSCC_MLLP_IDLE_TIMEOUT_S``. Inside a frame, each read may
wait ``MSCC_MLLP_FRAME_TIMEOUT_S`` for data, and the whole frame must end within
``MSCC_MLLP_FRAME_TOTAL_TIMEOUT_S`` of its first byte, however the bytes trickle in: a sender sending
one byte a second cannot hold a connection (and the bytes it buffers) open for ever. Time a reader
spends waiting for room in the intake's byte budget is the hub's doing, not the sender's, and does not
count against the frame.
"""

from __future__ import annotations

from shared.budget import ByteBudget
from shared.mllp import FrameDecoder
from shared.settings import Settings

READ_SIZE = 1 << 16  # bytes read from a socket at once (and the stream buffer's limit)
# A message being stored holds about four times its size in memory (measured: bench/intake_memory.py):
# its bytes, its decoded text, and both again encoded for the database. A complete frame is charged that
# before it is stored, so the byte budget bounds what storing costs, not only what reading does.
STORING_COST = 4


def intake_budget(settings: Settings) -> ByteBudget:
    """The process's budget of bytes in flight (``MSCC_INTAKE_MAX_BYTES_IN_FLIGHT``); one reader at a time
    may go past it by what finishing and storing one largest message takes."""
    overdraft = STORING_COST * settings.mllp_max_message_bytes + READ_SIZE
    return ByteBudget(settings.intake_max_bytes_in_flight, overdraft)


class FrameClock:
    def __init__(self, settings: Settings) -> None:
        self._idle = settings.mllp_idle_timeout_s
        self._stall = settings.mllp_frame_timeout_s
        self._total = settings.mllp_frame_total_timeout_s
        self._seen = 0  # the decoder's frame count when a frame's start was last noted
        self._deadline = 0.0

    def next_read(self, decoder: FrameDecoder, now: float) -> tuple[float, str]:
        """How long the next read may wait, and the reason to keep the partial frame with if it times out."""
        if not decoder.in_frame:
            return self._idle, f"connection idle for {self._idle}s; closed"
        remaining = self._deadline - now
        if remaining < self._stall:
            reason = (
                f"frame unfinished {self._total}s after its first byte (MSCC_MLLP_FRAME_TOTAL_TIMEOUT_S); "
                "connection closed"
            )
            return max(0.0, remaining), reason
        return self._stall, f"frame unfinished after {self._stall}s without data; connection closed"

    def fed(self, decoder: FrameDecoder, arrived: float) -> None:
        """Note the bytes that arrived at ``arrived`` were fed: a frame they began is timed from then."""
        if decoder.starts != self._seen:
            self._seen = decoder.starts
            self._deadline = arrived + self._total

    def paused(self, seconds: float) -> None:
        """The reader waited ``seconds`` for the byte budget: the frame in progress gets them back."""
        self._deadline += seconds
