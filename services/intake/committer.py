"""Group commit: inbound records from every connection are written together, durably, in few round trips.

``commit(docs)`` queues records and resolves once they are on disk (write concern majority, journaled).
While one ``insert_many`` is in flight the next batch gathers, so many senders share each journal
flush. A record whose ``dedup_key`` already exists resolves to the stored original instead
(``inserted=False``). Any other database error is raised to the caller, which must not acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.read_concern import ReadConcern

from shared.store import Document

DUPLICATE_KEY = 11000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Committed:
    inserted: bool
    document: Document


class StoreUnavailable(Exception):
    """The records were not written; nothing may be acknowledged as accepted."""


_Item = tuple[Document, "asyncio.Future[Committed]"]


class GroupCommitter:
    def __init__(self, collection: AsyncCollection[Document], *, max_batch: int = 256, max_concurrent: int = 2) -> None:
        self._collection = collection
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def collection(self) -> AsyncCollection[Document]:
        return self._collection

    async def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._run(), name=f"group-commit-{i}") for i in range(self._max_concurrent)
            ]

    async def stop(self) -> None:
        """Write what is queued, then stop the workers."""
        await self._queue.join()
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    async def commit(self, docs: list[Document]) -> list[Committed]:
        """Write ``docs`` durably (with whatever else is queued); raise ``StoreUnavailable`` on failure."""
        if not self._workers:
            raise StoreUnavailable("the group committer is not running")
        loop = asyncio.get_running_loop()
        futures = []
        for doc in docs:
            future: asyncio.Future[Committed] = loop.create_future()
            self._queue.put_nowait((doc, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # One turn of the event loop lets frames already read on other connections join this batch.
            await asyncio.sleep(0)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:  # a bug must not leave senders waiting forever for their ACK
                log.exception("group commit failed")
                self._fail(batch, f"internal error while storing: {exc!r}")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _durable_original(self, key: str, wait_s: float = 5.0) -> Document | None:
        """The stored original of a duplicate, once a majority has it: a resend is never answered from a
        write that could still be lost. The original may be in flight in a concurrent batch, so wait."""
        majority = self._collection.with_options(read_concern=ReadConcern("majority"))
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            original = await majority.find_one({"dedup_key": key})
            if original is not None or asyncio.get_running_loop().time() > deadline:
                return original
            await asyncio.sleep(0.01)

    @staticmethod
    def _fail(batch: list[_Item], reason: str) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(reason))

    async def _write(self, batch: list[_Item]) -> None:
        docs = [doc for doc, _ in batch]
        failed: dict[int, dict[str, object]] = {}
        try:
            await self._collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                # Written but not confirmed durable: not safe to acknowledge; the sender resends and
                # duplicate detection answers with the stored original.
                self._fail(batch, f"write concern not satisfied: {exc.details['writeConcernErrors']}")
                return
            failed = {int(err["index"]): err for err in exc.details.get("writeErrors", [])}
        except PyMongoError as exc:
            self._fail(batch, str(exc))
            return
        for index, (doc, future) in enumerate(batch):
            if future.done():
                continue
            error = failed.get(index)
            if error is None:
                future.set_result(Committed(True, doc))
                continue
            original = None
            if error.get("code") == DUPLICATE_KEY and doc.get("dedup_key"):
                try:
                    original = await self._durable_original(doc["dedup_key"])
                except PyMongoError as exc:
                    future.set_exception(StoreUnavailable(str(exc)))
                    continue
            if original is None:
                future.set_exception(StoreUnavailable(str(error.get("errmsg", error))))
            else:
                future.set_result(Committed(False, original))
