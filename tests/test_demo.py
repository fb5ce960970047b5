"""``mscc run --demo`` as a newcomer runs it: a real hub process (against the suite's mongod), the demo's
loopback receiver, and the story on stdout; then the same again on the same database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from services.demo import demo_settings, run_demo
from services.demo.messages import TRUSTS, Run, chester_referral, wirral_referral
from shared.mongod import free_port
from shared.nhs import is_valid_nhs_number
from shared.settings import Settings
from shared.store import Document, Store

ROOT = Path(__file__).resolve().parent.parent
ENDED = ("Demo complete.", "Demo incomplete", "demo: stopped:", "demo: not run:")


def _env(tmp_path: Path, mongodb_uri: str, db_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_") and k != "MONGODB_URI"}
    env.update(
        MONGODB_URI=mongodb_uri,
        MSCC_DB_NAME=db_name,
        MSCC_STATE_DIR=str(tmp_path / "state"),
        MSCC_HTTP_PORT=str(free_port()),
        MSCC_MLLP_PORT=str(free_port()),
    )
    return env


async def _demo_run(tmp_path: Path, mongodb_uri: str, db_name: str, seconds: float = 25) -> str:
    """Run ``mscc run --demo`` until the story ends, then Ctrl-C; its stdout (the hub must exit 0)."""
    log = (tmp_path / f"hub-{uuid.uuid4().hex[:6]}.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "run",
        "--demo",
        cwd=ROOT,
        env=_env(tmp_path, mongodb_uri, db_name),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(seconds):
            while line := (await process.stdout.readline()).decode():
                lines.append(line)
                if line.startswith("demo: ") and any(end in line for end in ENDED):
                    break
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
        log.close()
    output = "".join(lines) + rest.decode()
    if process.returncode != 0:
        output += await asyncio.to_thread(Path(log.name).read_text)
    assert process.returncode == 0, output
    return output


def _story_holds(out: str) -> None:
    # 1-2: the receiver, and each trust's subscriptions in its own name (another trust's: 403)
    assert "/aos/RJR/flaky answers 503" in out
    assert len(re.findall(r"(RBL|RJR) subscribes to '[a-z-]+' .* -> 201 Subscription/", out)) == 4
    assert "RJR tries to subscribe to RBL's referrals -> 403" in out
    assert "handshakes answered: 4 of 4" in out
    # 3: referrals over MLLP and FHIR, a resend, a fragment refused, an ADT update
    assert "MSA|CA|DEMOREF" in out and "the original ACK, byte for byte" in out
    assert "MSA|AR||the first segment must be MSH" in out
    assert "RJR's EPR: POST /fhir/ServiceRequest -> 201" in out
    assert "MSA|AA|DEMOADT" in out
    assert len(re.findall(r"demo: mapped: CarePlan/\S+ for (RBL|RJR)'s referral: Whole-spine MRI due 20", out)) == 2
    assert "completed, nothing missing" in out  # RBL's REF^I12 carries the minimum data
    assert "requested, lacks: the neurological status" in out  # RJR's FHIR referral does not
    # 4: the MSCC team's steps and the HNA
    for step in ("triaged-accepted", "mri-requested", "mri-reported"):
        assert re.search(rf"demo:    {step}\s+-> 200", out), step
    assert "completes an HNA with the patient: POST /fhir -> 200" in out
    # 5: what the receiver got, signed, the flaky endpoint's 503s and the retry that got through
    got = re.findall(r"demo:   <- (\w+) Acute Oncology got '([a-z-]+)' event \d+ \(([a-z-]+)\): (.*)", out)
    assert {(trust, topic) for trust, topic, _, _ in got} == {
        ("RBL", "referral-status"),
        ("RBL", "hna-completed"),
        ("RJR", "referral-status"),
        ("RJR", "data-quality"),
    }
    assert all("[signature ok" in rest for _, _, _, rest in got)
    assert any(t == "RBL" and "pathway step mri-reported" in rest for t, _, _, rest in got)
    assert any(topic == "hna-completed" and "support plan: Pain (scored 8/10)" in rest for _, topic, _, rest in got)
    assert out.count("answered 503, Retry-After 1 s") == 2
    assert re.search(r"RJR Acute Oncology got 'referral-status' .*accepted after 2 refused attempt", out)
    # the summary
    assert "|  RBL  REF^I12 over MLLP                  CA" in out
    assert "|  REN  $transition                        200 (x3)" in out
    assert re.search(r"\|   CarePlan \d+, Condition 2, Encounter \d+, Patient \d+, QuestionnaireResponse 1", out)
    assert "Notifications delivered: 7 (RBL 5, RJR 2), all signed" in out
    assert "Retried: RJR 'referral-status' event 1, answered 503 2 time(s), then delivered" in out
    assert "/fhir/ServiceRequest?requester=Organization/RBL" in out and "/readyz" in out and "/docs" in out
    assert "mscc messages list" in out and "mscc replay --help" in out
    assert "demo: Demo complete." in out


def _wirral_referral_id(out: str) -> str:
    found = re.search(r"demo: mapped: CarePlan/\S+ for RBL's referral", out)
    assert found is not None
    return found.group(0)


@pytest.mark.timeout(120)
async def test_demo_tells_the_story_and_runs_again_on_the_same_data(
    tmp_path: Path, mongodb_uri: str, mongo_client: AsyncMongoClient[Document]
) -> None:
    db_name = f"demo_{uuid.uuid4().hex[:12]}"
    try:
        first = await _demo_run(tmp_path, mongodb_uri, db_name)
        _story_holds(first)
        store = Store(mongo_client, db_name)
        # The retried notification, as the hub recorded it: two 503s with Retry-After, then delivered.
        retried = await store.deliveries.find_one({"status": "delivered", "attempts.code": "503"})
        assert retried is not None
        assert [a["code"] for a in retried["attempts"]] == ["503", "503", "200"]
        assert [a.get("retry_after_s") for a in retried["attempts"][:2]] == [1.0, 1.0]
        # The fragment was refused and kept, with the reason.
        kept = await store.messages.find_one({"status": "rejected", "reason": {"$regex": "first segment must be MSH"}})
        assert kept is not None

        second = await _demo_run(tmp_path, mongodb_uri, db_name)
        _story_holds(second)
        assert "removed 4 subscription(s) of an earlier demo run" in second
        assert _wirral_referral_id(first) != _wirral_referral_id(second)  # a new referral, not a resend
        assert await store.subscriptions.count_documents({}) == 4  # the first run's were removed
    finally:
        await mongo_client.drop_database(db_name)


def test_demo_data_is_fictional_valid_and_new_on_every_run() -> None:
    assert all(is_valid_nhs_number(trust.nhs_number) for trust in TRUSTS)
    first, second = Run(), Run()
    assert first.id != second.id
    assert wirral_referral(first) != wirral_referral(second)
    assert chester_referral(first)["identifier"] != chester_referral(second)["identifier"]
    assert b"01632 960" in wirral_referral(first)  # Ofcom's numbers for drama, never a real line


async def test_demo_does_not_run_in_production_and_says_why(
    store: Store, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    production = settings.model_copy(update={"environment": "production", "allow_dev_client": False})
    assert demo_settings(production) == production  # no callbacks to loopback are allowed there
    assert not await run_demo(production, store, 1, 1)
    out = capsys.readouterr().out
    assert "demo: not run: the demo runs in development only (MSCC_ENVIRONMENT=development)" in out
    relaxed = demo_settings(settings)
    assert relaxed.notifier_allow_http and "127.0.0.1" in relaxed.notifier_allowed_hosts
