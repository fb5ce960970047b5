"""Sending one notification: a rest-hook POST (aiohttp, the process's one session) or an MLLP exchange.

Neither raises for a receiver's failure: every outcome is a ``SendResult`` (delivered or not, the HTTP
status or ACK code, the latency, the receiver's reason), which the delivery worker records.

Rest-hook outcomes: 2xx delivered; 429 and 503 retried after the receiver's ``Retry-After``; any other
status (3xx are not followed: a redirect could lead anywhere), a timeout, or a connection that fails or
closes is retried with backoff, and counts as an attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import aiohttp

from shared.mllp import MllpClient, MllpError

from .hl7 import read_ack
from .model import SendResult
from .retry import parse_retry_after

ERROR_BODY_BYTES = 300
MAX_ANSWER_BYTES = 64 * 1024


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class RestHookSender:
    """POSTs notification bodies with the shared session; never follows redirects."""

    def __init__(self, session: aiohttp.ClientSession, clock: Callable[[], datetime]) -> None:
        self._session = session
        self._clock = clock

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> SendResult:
        started = time.perf_counter()
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    # Read a small answer so the connection is reused; a large one is not read (the
                    # connection is closed instead): a receiver cannot make the hub buffer megabytes.
                    await response.content.read(MAX_ANSWER_BYTES)
                    return SendResult(True, str(status), _elapsed_ms(started))
                text = (await response.content.read(ERROR_BODY_BYTES)).decode("utf-8", errors="replace")
                retry_after = (
                    parse_retry_after(response.headers.get("Retry-After"), self._clock())
                    if status in (429, 503)
                    else None
                )
                reason = f"HTTP {status} {response.reason or ''}".strip()
                return SendResult(
                    False, str(status), _elapsed_ms(started), f"{reason}: {text.strip()}"[:500], retry_after
                )
        except TimeoutError:
            return SendResult(False, "timeout", _elapsed_ms(started), f"no answer within {timeout_s:g} s")
        except aiohttp.ServerDisconnectedError as exc:
            return SendResult(False, "connection", _elapsed_ms(started), f"the receiver closed the connection: {exc}")
        except aiohttp.ClientConnectorError as exc:
            reason = str(exc.os_error) or str(exc)
            return SendResult(False, "connection", _elapsed_ms(started), f"cannot connect to {exc.host}: {reason}")
        except (aiohttp.ClientError, OSError) as exc:
            return SendResult(False, "connection", _elapsed_ms(started), f"{type(exc).__name__}: {exc}")


class MllpLink:
    """One MLLP connection for one lane: opened on first use, kept for the lane's next events, closed on
    any error (the next attempt reconnects) and when the lane ends."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout_s
        self._client: MllpClient | None = None

    async def send(self, message: bytes, control_id: str) -> SendResult:
        started = time.perf_counter()
        try:
            if self._client is None:
                self._client = await MllpClient.connect(self._host, self._port, timeout_s=self._timeout)
            reply = await self._client.send(message)
        except (MllpError, OSError) as exc:
            await self.close()
            code = "timeout" if "no reply" in str(exc) else "connection"
            return SendResult(False, code, _elapsed_ms(started), str(exc))
        latency = _elapsed_ms(started)
        try:
            ack = read_ack(reply)
        except ValueError as exc:
            await self.close()
            return SendResult(False, "unreadable", latency, f"the reply is not an ACK: {exc}")
        if ack.control_id and ack.control_id != control_id:
            await self.close()  # out of step with the receiver: start again on a fresh connection
            return SendResult(False, ack.code or "?", latency, f"ACK for {ack.control_id}, not {control_id}")
        if ack.code in ("AA", "CA"):
            return SendResult(True, ack.code, latency)
        reason = f"{ack.code}: {ack.text or 'no reason given'}"
        return SendResult(False, ack.code or "?", latency, reason, permanent=ack.code in ("AE", "CE"))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
