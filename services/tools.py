"""Operator tools behind ``mscc messages`` and ``mscc replay``."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared import review as held_messages
from shared.auth import Caller
from shared.er7 import split_message_log
from shared.fhir import FhirError
from shared.messages import FHIR, MessageRecord
from shared.mllp import MllpClient, MllpError
from shared.settings import Settings
from shared.store import Document, Store, connect

from .intake.service import IntakeService
from .runner import database


def _line(record: MessageRecord) -> str:
    when = record.received_at.isoformat(timespec="seconds")
    reason = f"  {record.reason}" if record.reason else ""
    return f"{record.id}  {when}  {record.status:<10} {record.protocol:<12} {record.what}{reason}"


async def messages(settings: Settings, action: str, record: str | None, status: str | None, limit: int) -> int:
    async with database(settings) as uri:
        client = connect(uri)
        try:
            store = Store(client, settings.db_name)
            if action == "list":
                query: dict[str, Any] = {"status": status} if status else {}
                async for doc in store.messages.find(query, {"raw": 0, "text": 0}).sort("received_at", -1).limit(limit):
                    print(_line(MessageRecord.from_doc(doc)))
                return 0
            if not record:
                print(f"mscc messages {action}: give a record id (see 'mscc messages list')", file=sys.stderr)
                return 2
            found = await store.messages.find_one({"_id": record})
            if found is None:
                print(f"mscc messages {action}: no record {record}", file=sys.stderr)
                return 1
            if action == "show":
                shown = {k: v for k, v in found.items() if k != "raw"}
                print(json.dumps(shown, indent=2, default=str))
                return 0
            return await _reprocess(settings, store, found)
        finally:
            await client.close()


@dataclass(frozen=True)
class Decision:
    """An operator's decision on a held record: which, by whom, and (to reject) why."""

    record: str | None
    by: str
    reason: str = ""


def operator() -> str:
    """The login name of whoever runs the command (recorded on the records they decide)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown operator"


def _held_line(doc: Document) -> str:
    item = held_messages.summary(doc)
    when = item["received_at"].isoformat(timespec="seconds") if isinstance(item["received_at"], datetime) else ""
    conflicts = "; ".join(str(c) for c in item["conflicts"]) or "(no conflict recorded)"
    return f"{item['id']}  {when}  {item['sender'] or '?':<8} {item['message_type'] or '?':<10} {conflicts}"


async def review(settings: Settings, action: str, decision: Decision, limit: int) -> int:
    """``review``: list held records (oldest first, conflicts with masked values); ``apply`` /
    ``reject``: decide one. 1 when the record does not exist or is not held, 2 for a missing argument."""
    if action != "review" and not decision.record:
        print(f"mscc messages {action}: give a record id (see 'mscc messages review')", file=sys.stderr)
        return 2
    if action == "reject" and not decision.reason.strip():
        print("mscc messages reject: give the reason (--reason ...)", file=sys.stderr)
        return 2
    async with database(settings) as uri:
        client = connect(uri)
        try:
            store = Store(client, settings.db_name)
            if action == "review":
                docs = await held_messages.held(store, limit)
                for doc in docs:
                    print(_held_line(doc))
                if not docs:
                    print("no message is waiting for review")
                return 0
            record = str(decision.record)
            try:
                if action == "apply":
                    await held_messages.apply(store, record, decision.by)
                    print(f"{record}: queued to be written despite the conflict (by {decision.by})")
                else:
                    await held_messages.reject(store, record, decision.by, decision.reason)
                    print(f"{record}: rejected by {decision.by}; nothing from it is written")
            except held_messages.ReviewError as exc:
                print(f"mscc messages {action}: {exc}", file=sys.stderr)
                return 1
            return 0
        finally:
            await client.close()


async def _reprocess(settings: Settings, store: Store, doc: Document) -> int:
    """Run a kept record through intake again (after a fix or a configuration change)."""
    record = MessageRecord.from_doc(doc)
    if record.status != "rejected":
        print(
            f"record {record.id} has status {record.status!r}: only rejected records are reprocessed here",
            file=sys.stderr,
        )
        return 1
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    caller_doc = record.caller or {}
    caller = Caller(**{**caller_doc, "scopes": frozenset(caller_doc.get("scopes", []))})
    raw = record.raw or b""
    try:
        if record.protocol == FHIR:
            header = record.fhir_header
            try:
                if header is not None and header.interaction == "create" and header.resource_type:
                    reply = await service.fhir.create(
                        header.resource_type, raw, "application/fhir+json", None, caller, "reprocess"
                    )
                else:
                    reply = await service.fhir.post_bundle(raw, "application/fhir+json", caller, "reprocess")
                outcome, new_ids = f"HTTP {reply.status}", [reply.headers.get("X-Message-Id", "")]
            except FhirError as exc:
                outcome, new_ids = f"HTTP {exc.status}: {exc}", []
        else:
            ack = await service.hl7.receive(raw, channel="reprocess", peer="reprocess", caller=caller)
            outcome, new_ids = ack.code, list(ack.record_ids)
    finally:
        await service.stop()
    await store.messages.update_one(
        {"_id": record.id},
        {"$set": {"reprocessed": {"at": datetime.now().astimezone(), "outcome": outcome, "records": new_ids}}},
    )
    print(f"reprocessed {record.id}: {outcome}; new records: {', '.join(i for i in new_ids if i) or 'none'}")
    return 0


async def replay(files: list[str], host: str, port: int) -> int:
    """Send each message of each file over MLLP, in order, printing each ACK's MSA-1; 1 if any failed."""
    failures = 0
    try:
        client = await MllpClient.connect(host, port)
    except MllpError as exc:
        print(f"mscc replay: {exc}", file=sys.stderr)
        return 1
    try:
        for name in files:
            data = await asyncio.to_thread(Path(name).read_bytes)
            for number, message in enumerate(split_message_log(data), start=1):
                reply = await client.send(message)
                code = _msa_code(reply)
                failures += code not in ("AA", "CA")
                print(f"{name} #{number}: {code}")
    except (OSError, MllpError) as exc:
        print(f"mscc replay: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 1 if failures else 0


def _msa_code(reply: bytes) -> str:
    for segment in reply.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment[4:].split(segment[3:4] or b"|", 1)[0].decode("latin-1")
    return "?"
