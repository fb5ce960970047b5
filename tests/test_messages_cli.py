"""``mscc messages``: search, show, reprocess and the help of every command, against the real mongod.

Records are made by the real intake (HL7v2 through ``intake.hl7.receive``, FHIR through the API as a
trust's client), mapped by the real mapper and notified by the real notifier to a loopback receiver.
The command runs in-process (``services.cli.main``, in a thread: it runs its own event loop) on the
test's database through ``MONGODB_URI`` and ``MSCC_DB_NAME``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web
from receivers import loopback_settings, rest_hook_channel, serve_http, subscription_body
from trusts import client_as

from services import cli
from services.intake.reprocess import plan
from services.intake.service import IntakeService
from services.mapper.model import MappingError, MappingResult
from services.mapper.service import MapperService
from services.mapper.worker import MapperWorker, WorkerConfig
from services.notifier.service import NotifierService
from shared.auth import Caller
from shared.message_query import MessageFilter
from shared.messages import MessageRecord
from shared.settings import Settings
from shared.store import Document, Store

NHS = "9449305552"
MASKED = "944*****2"
ENGINE = Caller("mllp:engine", "", frozenset({"system/hl7v2.c"}))
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def hl7(control: str, *, facility: str = "RBL", kind: str = "REF^I12^REF_I12", note: str = "Suspected MSCC") -> bytes:
    lines = [
        f"MSH|^~\\&|PAS|{facility}|MSCC-HUB|REN|20261125080000||{kind}|{control}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{control}-REF|20261125|||{note}",
        f"PRD|RP|ONCOLOGY^ACUTE||^^^{facility}",
        f"PID|1||{NHS}^^^NHS^NH~{control}^^^{facility}^MR||DEMO^ALEX||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def adt(control: str, facility: str = "RJR") -> bytes:
    lines = [
        f"MSH|^~\\&|PAS|{facility}|MSCC-HUB|REN|20261125090000||ADT^A01|{control}|P|2.4",
        "EVN|A01|20261125090000",
        f"PID|1||{control}^^^{facility}^MR||DEMO^SAM||19600101|F",
        "PV1|1|I|WARD1^BED2",
    ]
    return ("\r".join(lines) + "\r").encode()


def referral(value: str) -> dict[str, object]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
    }


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[Document]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


Mscc = Callable[..., Awaitable[Ran]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Notifications to a loopback receiver allowed (the show test follows a message to its delivery)."""
    return loopback_settings(settings)


@pytest.fixture
def mscc(
    settings: Settings, mongodb_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Mscc:
    """Run ``mscc ...`` on the test's database; its exit code and what it printed."""
    monkeypatch.setenv("MONGODB_URI", mongodb_uri)
    monkeypatch.setenv("MSCC_DB_NAME", settings.db_name)
    monkeypatch.setenv("MSCC_STATE_DIR", str(settings.state_dir))

    async def run(*args: str) -> Ran:
        capsys.readouterr()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            code = await asyncio.to_thread(cli.main, list(args))
        finally:
            root.handlers[:] = handlers  # the command installs its own log handler
            root.setLevel(level)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


async def receive(intake: IntakeService, data: bytes) -> str:
    reply = await intake.hl7.receive(data, channel="mllp", peer="127.0.0.1:1", caller=ENGINE)
    return reply.record_ids[0]


async def doc(store: Store, record: str) -> Document:
    found = await store.messages.find_one({"_id": record})
    assert found is not None, record
    return found


async def test_search_prints_a_header_row_and_masks_nhs_numbers(intake: IntakeService, mscc: Mscc) -> None:
    accepted = await receive(intake, hl7("M1"))
    rejected = await receive(intake, f"PID|1||{NHS}^^^NHS^NH\r".encode())  # no MSH: refused, kept
    found = await mscc("messages", "search")
    assert found.code == 0, found.err
    lines = found.out.splitlines()
    assert lines[0].split() == ["id", "received", "status", "protocol", "type", "sender", "control", "id", "reason"]
    assert lines[1].startswith(rejected) and lines[2].startswith(accepted)  # newest first
    assert "REF^I12" in lines[2] and "RBL" in lines[2] and "M1" in lines[2]
    assert MASKED in lines[1] and NHS not in found.out  # the refusal quotes the segment: masked
    assert lines[-1] == "2 record(s), newest first"

    raw = await mscc("messages", "list", "--id", accepted, "--raw")  # list is search
    assert raw.code == 0 and f"    PID|1||{MASKED}^^^NHS^NH" in raw.out and NHS not in raw.out
    unmasked = await mscc("messages", "search", "--id", accepted, "--raw", "--unmask")
    assert f"PID|1||{NHS}^^^NHS^NH" in unmasked.out


async def test_each_filter_finds_only_its_records(
    intake: IntakeService, http: httpx.AsyncClient, store: Store, mscc: Mscc
) -> None:
    ref = await receive(intake, hl7("C-100", note="cauda equina concerns"))
    old = await receive(intake, hl7("C-200", facility="RVY"))
    ward = await receive(intake, adt("C-300"))
    refused = await receive(intake, b"not a message\r")
    async with client_as(http, "RJR") as rjr:
        created = await rjr.post("/fhir/ServiceRequest", json=referral("F1"), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        empty = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []})
        bundle = await rjr.post("/fhir", content=empty, headers=FHIR_JSON)
        assert bundle.status_code < 300, bundle.text
    fhir_create = (await store.messages.find_one({"protocol": "fhir", "header.interaction": "create"}) or {})["_id"]
    fhir_bundle = (await store.messages.find_one({"protocol": "fhir", "header.interaction": "bundle"}) or {})["_id"]
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    await store.messages.update_one({"_id": old}, {"$set": {"received_at": three_days_ago}})

    async def ids(*options: str) -> set[str]:
        ran = await mscc("messages", "search", "--json", "--limit", "50", *options)
        assert ran.code == 0, ran.err
        return {line["id"] for line in ran.json_lines()}

    everything = {ref, old, ward, refused, fhir_create, fhir_bundle}
    assert await ids() == everything
    assert await ids("--status", "rejected") == {refused}
    assert await ids("--status", "ready") == everything - {refused}
    assert (
        await ids("--status", "rejected,ready") == await ids("--status", "rejected", "--status", "ready") == everything
    )
    assert await ids("--sender", "RBL") == {ref}
    assert await ids("--sender", "RJR") == {ward, fhir_create, fhir_bundle}  # MSH-4, or the client's ODS code
    assert await ids("--type", "REF^I12") == {ref, old}
    assert await ids("--type", "ADT^*") == await ids("--type", "ADT") == {ward}
    assert await ids("--type", "fhir:ServiceRequest") == {fhir_create}
    assert await ids("--type", "fhir:Bundle") == {fhir_bundle}
    assert await ids("--since", "1d") == everything - {old}
    assert await ids("--until", "2d") == {old}
    since = (three_days_ago - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (three_days_ago + timedelta(hours=1)).isoformat()
    assert await ids("--since", since, "--until", until) == {old}
    assert await ids("--control-id", "C-300") == {ward}
    assert await ids("--id", f"{ref},{ward}") == {ref, ward}
    assert await ids("--text", "cauda equina") == {ref}
    assert await ids("--sender", "RBL", "--type", "ADT") == set()
    limited = await mscc("messages", "search", "--json", "--limit", "2")
    assert len(limited.json_lines()) == 2

    [line] = (await mscc("messages", "search", "--json", "--id", ref)).json_lines()
    assert line["type"] == "REF^I12" and line["sender"] == "RBL" and line["control_id"] == "C-100"
    assert line["status"] == "ready" and line["protocol"] == "hl7v2" and "raw" not in line
    [with_raw] = (await mscc("messages", "search", "--json", "--raw", "--id", ref)).json_lines()
    assert with_raw["raw"].startswith("MSH|") and MASKED in with_raw["raw"] and NHS not in with_raw["raw"]


async def test_a_filter_that_cannot_be_read_says_what_to_write(mscc: Mscc) -> None:
    ran = await mscc("messages", "search", "--since", "yesterday")
    assert ran.code == 2 and "--since 'yesterday'" in ran.err and "2h" in ran.err and "2026-01-31" in ran.err
    assert (await mscc("messages", "search", "--limit", "0")).code == 2
    missing = await mscc("messages", "show", "no-such-record")
    assert missing.code == 1 and "no record no-such-record" in missing.err


async def test_search_by_sender_and_time_uses_the_sender_indexes(store: Store) -> None:
    # A region's traffic: twenty trusts, one record a minute; one trust's records are a few of them.
    now = datetime.now(UTC)
    trusts = [f"R{n:02d}" for n in range(19)] + ["RBL"]
    await store.messages.insert_many(
        [
            {
                "_id": f"r{i}",
                "received_at": now - timedelta(minutes=i),
                "protocol": "hl7v2" if i % 2 else "fhir",
                "status": "mapped",
                "header": {"sending_facility": trusts[i % 20], "control_id": f"C{i}"} if i % 2 else {},
                "caller": {"client_id": "c", "ods_code": "" if i % 2 else trusts[i % 20]},
            }
            for i in range(2000)
        ]
    )
    where = MessageFilter(sender="RBL", since=now - timedelta(hours=2))
    explained = await store.messages.find(where.query()).sort("received_at", -1).limit(20).explain()
    plan = json.dumps(explained["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in plan and '"SORT"' not in plan, plan  # the indexes give the order too
    assert "sender_received" in plan and "caller_ods_received" in plan, plan


async def test_show_traces_a_message_to_its_resources_events_and_deliveries(
    intake: IntakeService, http: httpx.AsyncClient, session: aiohttp.ClientSession, mscc: Mscc
) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    async with serve_http(answer) as base:
        settings = intake.settings
        channel = rest_hook_channel(f"{base}/hook", "id-only")
        criteria = ["ServiceRequest?requester=Organization/RBL"]
        body = subscription_body(settings, channel, topic="referral-status", reason="AOS", filters=criteria)
        created = await http.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        subscription = created.json()["id"]
        record = await receive(intake, hl7("S1"))
        await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)
        await NotifierService(intake.store, settings, session).run(asyncio.Event(), burst=True)

    written = [d async for d in intake.store.outbox.find({"message_id": record})]
    referral = next(d for d in written if d["type"] == "ServiceRequest")
    shown = await mscc("messages", "show", record)
    assert shown.code == 0, shown.err
    text = shown.out
    assert f"record      {record}" in text and "type        REF^I12" in text and "sender      RBL (PAS)" in text
    assert "received over mllp from 127.0.0.1:1" in text and "accepted (ACK AA)" in text
    assert f"mapped: {len(written)} resource version(s) written" in text
    assert f"  {referral['_id']}  created" in text  # resources produced, with their versions
    assert f"-> {subscription} #1: delivered, 1 attempt(s), last 200" in text
    assert NHS not in text

    as_json = json.loads((await mscc("messages", "show", record, "--json")).out)
    assert as_json["status"] == "mapped" and as_json["control_id"] == "S1"
    assert {r["reference"] for r in as_json["resources"]} >= {d["_id"] for d in written}
    assert [e["id"] for e in as_json["events"] if e["deliveries"]] == [referral["_id"]]
    [delivery] = next(e for e in as_json["events"] if e["id"] == referral["_id"])["deliveries"]
    assert delivery["status"] == "delivered" and delivery["subscription"] == subscription
    assert [step["what"].split(":")[0] for step in as_json["trace"]][-1] == "mapped"
    assert "raw" not in as_json

    raw = await mscc("messages", "show", record, "--raw")
    segments = raw.out.split("message\n", 1)[1].splitlines()
    assert [s.strip()[:3] for s in segments] == ["MSH", "RF1", "PRD", "PID", "OBX"]
    assert f"PID|1||{MASKED}^^^NHS^NH" in raw.out and NHS not in raw.out
    assert f"{NHS}^^^NHS^NH" in (await mscc("messages", "show", record, "--raw", "--unmask")).out


async def test_reprocess_a_rejected_message_after_a_fix_links_both_ways(
    settings: Settings, store: Store, tmp_path: Path, mscc: Mscc
) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "message_types": ["ADT^*"]}]}))
    strict = IntakeService(settings.model_copy(update={"senders_file": senders}), store)
    await strict.start(mllp=False)
    try:
        original = await receive(strict, hl7("X1"))
    finally:
        await strict.stop()
    assert (await doc(store, original))["status"] == "rejected"

    dry = await mscc("messages", "reprocess", original, "--dry-run")
    assert dry.code == 0 and "would be sent through intake again" in dry.out and "nothing was changed" in dry.out
    assert "reprocessed" not in await doc(store, original)

    # The sender may now send referrals (no senders file): the same bytes are accepted.
    ran = await mscc("messages", "reprocess", original, "--by", "op1")
    assert ran.code == 0, ran.err + ran.out
    assert ran.out.splitlines()[0].split() == ["record", "status", "action", "result"]
    kept = await doc(store, original)
    assert kept["status"] == "rejected" and kept["reprocessed"]["by"] == "op1"  # the original stays
    [new] = kept["reprocessed_as"]
    made = await doc(store, new)
    assert made["reprocess_of"] == original and made["status"] == "ready" and made["ack"]["code"] == "AA"
    assert "ACK AA" in ran.out and new in ran.out and "reprocessed 1 of 1" in ran.out

    shown = await mscc("messages", "show", original)
    assert f"reprocessed as: {new}" in shown.out
    assert f"reprocess of: {original}" in (await mscc("messages", "show", new)).out
    [line] = (await mscc("messages", "search", "--json", "--id", new)).json_lines()
    assert line["reprocess_of"] == original

    again = await mscc("messages", "reprocess", original)
    assert again.code == 1 and f"already reprocessed as {new}" in again.out


async def test_reprocess_failed_messages_queues_copies_that_keep_their_arrival(
    intake: IntakeService, store: Store, mscc: Mscc
) -> None:
    first, second = await receive(intake, hl7("F1")), await receive(intake, hl7("F2"))
    mapped = await receive(intake, adt("F3"))
    await store.messages.update_one({"_id": mapped}, {"$set": {"status": "mapped"}})

    def broken(record: Document) -> MappingResult:
        raise MappingError("a mapping table is missing", code="exception")

    await MapperWorker(store, broken).run(asyncio.Event(), burst=True)
    assert (await doc(store, first))["status"] == (await doc(store, second))["status"] == "failed"

    missing = await mscc("messages", "reprocess")
    assert missing.code == 2 and "--status" in missing.err
    dry = await mscc("messages", "reprocess", "--status", "failed", "--since", "1h", "--dry-run", "--json")
    assert [(o["record"], o["action"], o["done"]) for o in dry.json_lines()] == [
        (first, "mapper", False),
        (second, "mapper", False),
    ]
    ran = await mscc("messages", "reprocess", "--status", "failed", "--since", "1h", "--json")
    assert ran.code == 0, ran.err
    outcomes = ran.json_lines()
    assert [o["record"] for o in outcomes] == [first, second] and all(o["done"] for o in outcomes)
    for outcome in outcomes:
        original = await doc(store, outcome["record"])
        [copy_id] = original["reprocessed_as"]
        copy = await doc(store, copy_id)
        assert original["status"] == "failed" and copy["status"] == "ready"
        assert copy["reprocess_of"] == original["_id"] and copy["raw"] == original["raw"]
        assert copy["received_at"] == original["received_at"]  # the referral's clocks start when it arrived
        assert "dedup_key" not in copy and copy["channel"] == "reprocess"
    # The fixed mapper maps the copies; a second run selects nothing (each record is reprocessed once).
    await MapperService(store, WorkerConfig()).run(asyncio.Event(), burst=True)
    copies = [await doc(store, (await doc(store, o["record"]))["reprocessed_as"][0]) for o in outcomes]
    assert [c["status"] for c in copies] == ["mapped", "mapped"]
    assert (await mscc("messages", "reprocess", "--status", "failed")).out.startswith("no record matches")
    refused = await mscc("messages", "reprocess", mapped, "missing-id")
    assert refused.code == 1 and "only rejected, failed and dead records" in refused.out
    assert "no such record" in refused.out


def test_records_that_may_be_incomplete_or_are_decided_elsewhere_are_not_reprocessed() -> None:
    def record(status: str, **fields: object) -> MessageRecord:
        base: dict[str, object] = {"_id": "r1", "received_at": datetime.now(UTC), "protocol": "hl7v2"}
        base.update({"status": status, "raw": b"MSH|", "ack": {"code": "AR"}, **fields})
        return MessageRecord.from_doc(base)

    assert plan(record("rejected")).action == "intake"
    assert plan(record("failed")).action == plan(record("dead")).action == "mapper"
    cases = {
        "cut at intake": record("rejected", truncated=True),
        "kept without an answer": record("rejected", ack=None),
        "held for review": record("needs-review"),
        "only rejected, failed and dead": record("mapped"),
        "already reprocessed as r2": record("failed", reprocessed_as=["r2"]),
        "a rejected FHIR operation": record(
            "rejected", protocol="fhir", header={"interaction": "operation", "operation": "$transition"}
        ),
    }
    for why, kept in cases.items():
        outcome = plan(kept)
        assert outcome.action == "none" and why in outcome.note, (why, outcome)


async def test_review_lists_held_messages_under_a_header(store: Store, mscc: Mscc) -> None:
    empty = await mscc("messages", "review")
    assert empty.code == 0 and "no message is waiting for review" in empty.out
    held = {
        "_id": "held-1",
        "received_at": datetime.now(UTC),
        "protocol": "hl7v2",
        "status": "needs-review",
        "header": {"sending_facility": "RBL", "message_type": "ADT^A08", "control_id": "H1"},
        "caller": None,
        "processing": {
            "status": "needs-review",
            "at": datetime.now(UTC),
            "outcome": {"resourceType": "OperationOutcome", "issue": [{"code": "conflict", "diagnostics": "sex"}]},
        },
    }
    await store.messages.insert_one(held)
    listed = await mscc("messages", "review")
    assert listed.out.splitlines()[0].split() == ["id", "received", "sender", "type", "held", "conflicts"]
    assert "held-1" in listed.out and "ADT^A08" in listed.out and "sex" in listed.out
    no_reason = await mscc("messages", "reject", "held-1")
    assert no_reason.code == 2 and "--reason" in no_reason.err
    rejected = await mscc("messages", "reject", "held-1", "--reason", "wrong patient", "--by", "op2")
    assert rejected.code == 0 and (await doc(store, "held-1"))["review"]["by"] == "op2"
    assert (await mscc("messages", "apply", "held-1")).code == 1  # decided already


COMMANDS = ["run", "intake", "mapper", "notifier", "db", "messages", "replay", "audit", "clients", "report"]
ACTIONS = [["messages", a] for a in ("search", "list", "show", "reprocess", "review", "apply", "reject")]


@pytest.mark.parametrize("command", [[c] for c in COMMANDS] + ACTIONS + [[]], ids=" ".join)
def test_every_command_explains_itself_with_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert "examples" in out.lower(), out
    rest = out.partition("\n\n")[2]
    assert rest.strip() and not rest.startswith("positional") and not rest.startswith("options"), out


@pytest.fixture
def logs_kept() -> Iterator[None]:
    """The root logger as the test found it (the command installs its own handler)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("logs_kept")
def test_db_status_answers_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("MSCC_STATE_DIR", str(tmp_path / "state"))
    code = cli.main(["db", "status", "--json"])
    assert code == 3 and json.loads(capsys.readouterr().out) == {"running": False}
