"""``mscc messages reprocess`` killed with SIGKILL in the middle of its work (no handler runs) leaves the
record it held marked "in progress" under a lease; the mark expires, ``mscc messages show`` says the
record's reprocessing was interrupted, and the next run takes it over and links what the killed run made.

Real processes (``python -m services.cli``) against the test mongod; the kill lands while the command
holds a record: the test watches the database for its mark and kills the process as soon as it appears.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from test_graceful_stop import ROOT, part, part_env
from test_messages_cli import hl7, receive

from services.intake.reprocess import Reprocessor, plan
from services.intake.service import IntakeService
from shared.message_trace import render, trace
from shared.messages import MessageRecord
from shared.settings import Settings
from shared.store import Store

LEASE_S = 3.0
RECORDS = 20


def run_mscc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def rejected_records(settings: Settings, store: Store, tmp_path: Path, count: int = RECORDS) -> list[str]:
    """Referrals from a sender allowed only ADT: each is rejected at intake, kept with its bytes."""
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "message_types": ["ADT^*"]}]}))
    strict = IntakeService(settings.model_copy(update={"senders_file": senders}), store)
    await strict.start(mllp=False)
    try:
        ids = [await receive(strict, hl7(f"K{n:03d}")) for n in range(count)]
    finally:
        await strict.stop()
    assert await store.messages.count_documents({"_id": {"$in": ids}, "status": "rejected"}) == count
    return ids


async def test_a_reprocess_killed_midway_is_shown_interrupted_and_the_next_run_takes_it_over(
    mongodb_uri: str, settings: Settings, store: Store, tmp_path: Path
) -> None:
    originals = await rejected_records(settings, store, tmp_path)
    # Intake as reprocessing runs it accepts referrals from RBL (no senders file).
    env = part_env(mongodb_uri, settings, MSCC_REPROCESS_LEASE_S=str(LEASE_S), MSCC_LEASE_HEARTBEAT_S="0.5")

    with part(env, "messages", "reprocess", "--status", "rejected", "--by", "op-killed") as process:
        deadline = time.monotonic() + 60
        held = None
        while held is None and process.poll() is None and time.monotonic() < deadline:
            held = await store.messages.find_one({"reprocessed.outcome": "in progress"}, {"_id": 1})
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL, "the command finished before it could be killed"

    # Left as the kill found it: one record marked, its lease no longer renewed.
    marked = [MessageRecord.from_doc(d) async for d in store.messages.find({"reprocessed.outcome": "in progress"})]
    assert len(marked) == 1, [m.reprocessed for m in marked]
    [record] = marked
    mark = record.reprocessed or {}
    assert mark["by"] == "op-killed" and mark["owner"] and mark["until"] > mark["at"]

    # While the lease runs nobody else takes it, and it is shown as in progress.
    if mark["until"] > datetime.now(UTC):
        assert "being reprocessed by op-killed" in plan(record).note
        found = await trace(store, record.id)
        assert found is not None and "reprocess   in progress" in "\n".join(render(found))
    await asyncio.sleep(max(0.0, (mark["until"] - datetime.now(UTC)).total_seconds()) + 0.2)
    after = await store.messages.find_one({"_id": record.id})
    assert after is not None and after["reprocessed"]["until"] == mark["until"], "renewed after the kill"

    shown = run_mscc(env, "messages", "show", record.id)
    assert shown.returncode == 0, shown.stderr
    assert "reprocess   interrupted" in shown.stdout
    assert "reprocessing by op-killed interrupted" in shown.stdout, shown.stdout
    as_json = json.loads(run_mscc(env, "messages", "show", record.id, "--json").stdout)
    assert as_json["reprocessing"] == "interrupted"

    # The next run selects it again (with the records the killed run never reached) and finishes it.
    again = run_mscc(env, "messages", "reprocess", "--status", "rejected", "--by", "op2", "--json")
    assert again.returncode == 0, again.stderr + again.stdout
    outcomes = {o["record"]: o for o in (json.loads(line) for line in again.stdout.splitlines() if line.strip())}
    assert record.id in outcomes and outcomes[record.id]["done"], outcomes.get(record.id)
    assert "taking over an interrupted run" in outcomes[record.id]["note"]

    # Every original reprocessed exactly once: one accepted record each, linked both ways, none doubled
    # (a record the killed run had made through intake is linked, not made again).
    for original in originals:
        kept = await store.messages.find_one({"_id": original})
        assert kept is not None and kept["status"] == "rejected"
        assert kept["reprocessed"]["outcome"].startswith("ACK AA"), kept["reprocessed"]
        assert "owner" not in kept["reprocessed"] and len(kept["reprocessed_as"]) == 1, kept["reprocessed"]
        made = await store.messages.find_one({"_id": kept["reprocessed_as"][0]})
        assert made is not None and made["reprocess_of"] == original and made["status"] == "ready"
    assert await store.messages.count_documents({"peer": {"$regex": "^reprocess:"}}) == RECORDS
    finished = run_mscc(env, "messages", "show", record.id)
    assert "interrupted" not in finished.stdout and "reprocessed (ACK AA" in finished.stdout


async def test_a_run_killed_after_intake_stored_its_record_is_taken_over_and_linked_not_doubled(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    """The narrow window between intake storing the new record and the outcome being written, made
    deterministic: the killed run's steps are taken with the command's own functions, then abandoned."""
    [original] = await rejected_records(settings, store, tmp_path, count=1)
    quick = settings.model_copy(update={"reprocess_lease_s": 1.0, "lease_heartbeat_s": 0.5})
    found = await store.messages.find_one({"_id": original})
    assert found is not None
    record = MessageRecord.from_doc(found)

    killed = Reprocessor(quick, store, "op-killed")
    assert await killed._claim(record, datetime.now(UTC))
    intake = IntakeService(quick, store)
    await intake.start(mllp=False)
    try:
        assert await Reprocessor._send(intake, record, f"reprocess:{original}") == "ACK AA"
    finally:
        await intake.stop()
    [made] = [d["_id"] async for d in store.messages.find({"peer": f"reprocess:{original}"})]

    marked = await store.messages.find_one({"_id": original})
    assert marked is not None
    held = MessageRecord.from_doc(marked)
    assert "being reprocessed by op-killed" in plan(held).note  # while its lease runs
    await asyncio.sleep((marked["reprocessed"]["until"] - datetime.now(UTC)).total_seconds() + 0.2)

    async with Reprocessor(quick, store, "op2") as again:
        outcome = await again.run(held)
    assert outcome.done and outcome.new_records == (made,), outcome
    assert outcome.answer.startswith("ACK AA") and "duplicate" in outcome.answer  # nothing made twice
    kept = await store.messages.find_one({"_id": original})
    assert kept is not None and kept["reprocessed_as"] == [made] and kept["reprocessed"]["by"] == "op2"
    assert (await store.messages.find_one({"_id": made}) or {}).get("reprocess_of") == original
    assert await store.messages.count_documents({"peer": f"reprocess:{original}"}) == 1
