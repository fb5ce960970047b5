"""Group commit: inbound records from every connection are written together, durably, in few round trips.

``commit(docs)`` queues records and resolves once they are on disk (write concern majority, journaled).
While one ``insert_many`` is in flight the next batch gathers, so many senders share each journal
flush. A record of ``MSCC_INTAKE_OFFLOAD_BYTES`` or more (a large message kept, accepted or refused)
is written alone by a writer of its own: megabytes written and journaled with the small records would
hold up their ACKs. A record whose ``dedup_key`` already exists resolves to the stored original instead
(``inserted=False``). Any other database error is raised to the caller, which must not acknowledge, as
``StoreUnavailable`` saying whether it is transient (``shared/db_errors.py``) and naming only the error's
class and code: a database error's text can carry the record's content, which never reaches the log. A
record that cannot be encoded at all (too large, say) fails alone; the others in its group are written.
Each record gets its correlation id before it is queued, and is counted and logged once written
(``received.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import NamedTuple

import bson
from bson.errors import BSONError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DocumentTooLarge, PyMongoError, WriteError
from pymongo.read_concern import ReadConcern

from shared.db_errors import describe, is_transient
from shared.store import Document

from . import received

DUPLICATE_KEY = 11000
log = logging.getLogger(__name__)


class Committed(NamedTuple):
    """A record written (``inserted``), or the stored original a resend was found to be. A named tuple,
    not a frozen dataclass: one is made for every record, and it is made three times faster."""

    inserted: bool
    document: Document


class StoreUnavailable(Exception):
    """The records were not written; nothing may be acknowledged as accepted. ``failure``: the database
    error (its text is never logged); ``transient``: whether writing them again may succeed."""

    def __init__(self, reason: str, failure: BaseException | None = None) -> None:
        super().__init__(reason)
        self.failure = failure

    @property
    def transient(self) -> bool:
        return self.failure is None or is_transient(self.failure)


MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def _unencodable(doc: Document) -> BaseException | None:
    """Why ``doc`` cannot be written as it is (not encodable, or over MongoDB's document size), or None."""
    try:
        size = len(bson.encode(doc))
    except BSONError as exc:
        return exc
    return DocumentTooLarge(f"document of {size} bytes") if size > MAX_DOCUMENT_BYTES else None


_Item = tuple[Document, "asyncio.Future[Committed]"]


def _bulk(doc: Document) -> int:
    """About how many bytes ``doc`` writes: its raw message (its text, where kept, is about as long),
    or its text alone when that stands for the raw bytes (``raw_from_text``)."""
    raw = doc.get("raw")
    if raw is None and "raw_from_text" in doc:
        raw = doc.get("text")
    return len(raw) if isinstance(raw, bytes | str) else 0


class GroupCommitter:
    """Small records share group commits (``max_concurrent`` writers, ``max_batch`` records each); a
    record of at least ``large_bytes`` is written alone by a writer of its own, so that writing and
    journaling megabytes never holds up the small records queued with it."""

    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        max_batch: int = 256,
        max_concurrent: int = 2,
        large_bytes: int = 64 * 1024,
    ) -> None:
        self._collection = collection
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._large_bytes = large_bytes
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._large: asyncio.Queue[_Item] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.written_alone = 0  # large records written by their own writer

    @property
    def collection(self) -> AsyncCollection[Document]:
        return self._collection

    async def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._run(self._queue, self._max_batch), name=f"group-commit-{i}")
                for i in range(self._max_concurrent)
            ]
            self._workers.append(asyncio.create_task(self._run(self._large, 1), name="group-commit-large"))

    async def stop(self) -> None:
        """Write what is queued, then stop the workers."""
        await self._queue.join()
        await self._large.join()
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
        received.stamp(docs)  # each record's correlation id
        futures = []
        for doc in docs:
            future: asyncio.Future[Committed] = loop.create_future()
            (self._large if _bulk(doc) >= self._large_bytes else self._queue).put_nowait((doc, future))
            futures.append(future)
        try:
            # One record (an MLLP message, most often): its own future, without gather's wrapping.
            results = [await futures[0]] if len(futures) == 1 else list(await asyncio.gather(*futures))
        except StoreUnavailable:
            received.not_stored(docs)
            raise
        for result in results:  # counted and logged once stored, before anything is answered
            received.count(result.document, inserted=result.inserted)
        return results

    async def _run(self, queue: asyncio.Queue[_Item], max_batch: int) -> None:
        while True:
            batch = [await queue.get()]
            # One turn of the event loop lets frames already read on other connections join this batch.
            await asyncio.sleep(0)
            while len(batch) < max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            if queue is self._large:
                self.written_alone += 1
            try:
                await self._write(batch)
            except Exception as exc:  # a bug must not leave senders waiting forever for their ACK
                log.error("group commit failed", extra={"error": type(exc).__name__})
                self._fail(batch, f"internal error while storing: {type(exc).__name__}")
            finally:
                for _ in batch:
                    queue.task_done()

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
    def _fail(batch: list[_Item], reason: str, failure: BaseException | None = None) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailable(reason, failure))

    async def _write_encodable(self, batch: list[_Item], exc: BSONError) -> None:
        """After a group failed to encode: fail the records that cannot be written, write the rest."""
        good: list[_Item] = []
        for doc, future in batch:
            why = _unencodable(doc)
            if why is None:
                good.append((doc, future))
            elif not future.done():
                future.set_exception(StoreUnavailable(f"record cannot be stored: {describe(why)}", why))
        if len(good) == len(batch):
            self._fail(batch, f"records cannot be stored: {describe(exc)}", exc)
        elif good:
            await self._write(good)

    async def _write(self, batch: list[_Item]) -> None:
        docs = [doc for doc, _ in batch]
        failed: dict[int, dict[str, object]] = {}
        try:
            await self._collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                # Written but not confirmed durable: not safe to acknowledge; the sender resends and
                # duplicate detection answers with the stored original.
                self._fail(batch, f"write concern not satisfied: {describe(exc)}", exc)
                return
            failed = {int(err["index"]): err for err in exc.details.get("writeErrors", [])}
        except PyMongoError as exc:
            self._fail(batch, describe(exc), exc)
            return
        except BSONError as exc:  # DocumentTooLarge and kin: raised before anything is sent
            await self._write_encodable(batch, exc)
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
                    future.set_exception(StoreUnavailable(describe(exc), exc))
                    continue
            if original is None:
                # The original under this dedup key not readable yet: transient (a resend will find it).
                pending = error.get("code") == DUPLICATE_KEY and "dedup_key" in str(error.get("errmsg", ""))
                refused = None if pending else WriteError("write refused", int(str(error.get("code") or 0)), error)
                reason = "the original is not stored durably yet" if refused is None else describe(refused)
                future.set_exception(StoreUnavailable(f"write refused: {reason}", refused))
            else:
                future.set_result(Committed(False, original))
