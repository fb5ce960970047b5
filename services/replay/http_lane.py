"""One HTTP request at a time of a replay over HTTP, in the order its items were dealt.

HL7v2 goes to ``POST {URL}/hl7v2`` (``application/hl7-v2``; the answer is the ACK, a batch ACK for a
batch); FHIR lines to ``POST {URL}/fhir/{type}``, Bundles to ``POST {URL}/fhir``
(``application/fhir+json``). A 429 or 503 is waited out as ``Retry-After`` says (at most
``MAX_RETRY_AFTER_S`` each time, ``RETRIES`` times); a 401 gets a new token and one more try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from .auth import AuthError, TokenSource
from .items import HL7V2, Item
from .outcomes import UNANSWERED, Outcome, http_outcome, outcomes_for, read_ack
from .progress import Pacer

Done = Callable[[Item, list[Outcome]], None]
CONTENT_TYPES = {HL7V2: "application/hl7-v2", "fhir": "application/fhir+json"}
RETRIES = 5
MAX_RETRY_AFTER_S = 30.0


class HttpLane:
    """Sends the items dealt to it one after another through the shared ``session``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenSource | None,
        *,
        pacer: Pacer,
        done: Done,
    ) -> None:
        self._session = session
        self._base = base_url
        self._tokens = tokens
        self._pacer = pacer
        self._done = done

    async def run(self, queue: asyncio.Queue[Item | None]) -> None:
        while (item := await queue.get()) is not None:
            await self._pacer.wait()
            try:
                outcomes = await self._post(item)
            except (aiohttp.ClientError, TimeoutError, ConnectionError, AuthError) as exc:
                reason = str(exc) or type(exc).__name__
                outcomes = [Outcome(UNANSWERED, "no answer", reason)] * len(item.messages)
            self._done(item, outcomes)

    async def _post(self, item: Item) -> list[Outcome]:
        renewed = False
        attempt = 0
        while True:
            headers = {"Content-Type": CONTENT_TYPES[item.kind], "Accept": "*/*"}
            if self._tokens is not None:
                headers.update(await self._tokens.header())
            async with self._session.post(f"{self._base}{item.path}", data=item.data, headers=headers) as answer:
                body = await answer.read()
                status = answer.status
                retry_after = answer.headers.get("Retry-After", "")
            if status == 401 and self._tokens is not None and not renewed:
                self._tokens.expire()
                renewed = True
                continue
            if status in (429, 503) and attempt < RETRIES:
                attempt += 1
                await asyncio.sleep(_seconds(retry_after, attempt))
                continue
            if item.kind == HL7V2 and status == 200:
                return outcomes_for(len(item.messages), read_ack(body))
            return [http_outcome(status, body)] * len(item.messages)


def _seconds(retry_after: str, attempt: int) -> float:
    try:
        wait = float(retry_after)
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(MAX_RETRY_AFTER_S, max(0.0, wait))
