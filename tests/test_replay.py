"""``mscc replay`` against a real intake: every input form over MLLP, HL7v2 and FHIR over HTTP (uvicorn on
loopback) with real tokens, pacing, concurrency, the dry run, resuming from the journal, the summary
and failures file, and the exit status. The command runs in-process (``services.cli.main`` in a
thread, as the shell would run it) or, for the progress line, as ``Replay`` on the test's loop.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from helpers import on_free_port, serve_hub
from tokens import register

from services.cli import main
from services.intake.service import IntakeService
from services.replay.auth import Credentials, TokenSource
from services.replay.engine import Options, Replay
from services.replay.files import sources
from services.replay.readers import Reading, read_all
from shared.messages import HL7V2_BATCH
from shared.mllp import START_BLOCK, frame
from shared.mongod import free_port
from shared.settings import Settings
from shared.store import Store

NHS = "9449305552"


def message(control_id: str, kind: str = "REF^I12", sender: str = "RBL", end: str = "\r") -> bytes:
    """A small HL7v2 message: a REF^I12 referral with a patient, or an ADT of ``kind``."""
    msh = f"MSH|^~\\&|EPR|{sender}|MSCC-HUB|REN|20260101120000||{kind}|{control_id}|P|2.5.1"
    pid = f"PID|1||{NHS}^^^NHS^NH~X{control_id}^^^{sender}^MR||HOLLOWAY^ANNE||19500101|F"
    if kind.startswith("REF"):
        segments = [
            msh,
            f"RF1|A|U^Urgent^HL70280|ONC|R||R{control_id}|20260101120000",
            "PRD|RP|ADAMS^HELEN^^^DR|ROYAL BERKSHIRE HOSPITAL",
            pid,
            "DG1|1||C61^Malignant neoplasm of prostate^I10||20260101|F",
        ]
    else:
        segments = [msh, "EVN|A01|20260101120000", pid, "PV1|1|I|ONC^B01^1^RBL"]
    return (end.join(segments) + end).encode()


@dataclass
class Run:
    code: int
    out: str
    err: str

    def summary(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.out)
        return parsed


async def replay(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Run:
    """``mscc replay ARGS`` in a thread (the command runs its own event loop), with what it printed."""
    code = await asyncio.to_thread(main, ["replay", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return Run(code, out, err)


async def stored(store: Store, **query: object) -> int:
    return await store.messages.count_documents({"protocol": "hl7v2", **query})


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each run in its own folder (the default failures file is written there), and the logging that
    ``main`` configures (a handler on the captured stderr) put back as it was afterwards."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- input forms over MLLP ---------------------------------------------------------------------------


async def test_a_log_with_cr_lf_and_crlf_messages_and_blank_lines_is_sent_and_summarised(
    intake: IntakeService, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "rbl.log"
    log.write_bytes(
        message("L1")
        + b"\r\n\r\n"
        + message("L2", end="\n")
        + b"\n// a comment line\n"
        + message("L3", "ADT^A01", "RJR", end="\r\n")
    )
    run = await replay(capsys, log, "--port", intake.mllp.port)
    assert run.code == 0, run
    assert await stored(store, status="ready") == 3
    rows = {line.split()[0]: line.split()[1:] for line in run.out.splitlines() if line.strip()}
    assert rows["REF^I12"] == ["2", "2", "0", "0", "0"]
    assert rows["ADT^A01"] == ["1", "1", "0", "0", "0"]
    assert rows["RBL"] == ["2", "2", "0", "0", "0"] and rows["RJR"] == ["1", "1", "0", "0", "0"]
    assert not (tmp_path / "replay-failures.jsonl").exists()  # nothing failed: no failures file


async def test_a_folder_of_a_capture_and_a_gzip_log_is_read_recursively(
    intake: IntakeService, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    (folder / "day2").mkdir(parents=True)
    (folder / "capture.bin").write_bytes(frame(message("C1")) + b"\n" + frame(message("C2")))
    # gzip is found by its magic bytes, not its name
    (folder / "day2" / "rbl.dat").write_bytes(gzip.compress(message("G1") + b"\n" + message("G2")))
    run = await replay(capsys, folder, "--port", intake.mllp.port, "--json")
    assert run.code == 0, run
    assert run.summary()["accepted"] == 4
    ids = {d["header"]["control_id"] async for d in store.messages.find({"protocol": "hl7v2"})}
    assert ids == {"C1", "C2", "G1", "G2"}


async def test_a_batch_goes_whole_or_message_by_message(
    intake: IntakeService, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"FHS|^~\\&|EPR|RBL\rBHS|^~\\&|EPR|RBL\r" + message("B1") + message("B2") + b"BTS|2\rFTS|1\r")
    whole = await replay(capsys, batch, "--port", intake.mllp.port, "--json")
    assert whole.code == 0 and whole.summary()["accepted"] == 2, whole
    assert await store.messages.count_documents({"protocol": HL7V2_BATCH}) == 1  # one envelope, kept whole

    batch.write_bytes(batch.read_bytes().replace(b"|B1|", b"|S1|").replace(b"|B2|", b"|S2|"))
    split = await replay(capsys, batch, "--port", intake.mllp.port, "--json", "--split-batches")
    assert split.code == 0 and split.summary()["accepted"] == 2, split
    assert await store.messages.count_documents({"protocol": HL7V2_BATCH}) == 1  # no second envelope
    assert await stored(store, **{"header.control_id": {"$in": ["S1", "S2"]}}, batch=None) == 2


# --- HTTP, with real tokens ------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The hub's base URL is the server's own address: client assertions are made out to it."""
    return on_free_port(settings)


@pytest.fixture
async def hub(intake: IntakeService) -> AsyncIterator[str]:
    """The hub served by uvicorn at that address; yields its base URL."""
    async with serve_hub(intake) as url:
        yield url


def referral(value: str) -> dict[str, object]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
    }


async def test_hl7v2_and_fhir_ndjson_over_http_with_a_secret_client(
    hub: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await register(store, "REN", ["system/ServiceRequest.c", "system/Bundle.c", "system/hl7v2.c"])
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": referral("NDJ-2"), "request": {"method": "POST", "url": "ServiceRequest"}}
    ]}  # fmt: skip
    (tmp_path / "fhir.ndjson").write_text(json.dumps(referral("NDJ-1")) + "\n\n" + json.dumps(bundle) + "\n")
    (tmp_path / "rbl.hl7").write_bytes(message("H1"))
    monkeypatch.setenv("MSCC_REPLAY_CLIENT_SECRET", client.secret or "")
    run = await replay(capsys, tmp_path / "fhir.ndjson", tmp_path / "rbl.hl7", "--http", hub, "--client-id",
                       client.client_id, "--json", "--concurrency", "2")  # fmt: skip
    assert run.code == 0, run
    summary = run.summary()
    assert summary["accepted"] == 3
    assert set(summary["by_message_type"]) == {"ServiceRequest", "Bundle", "REF^I12"}  # type: ignore[arg-type]
    callers = {d["caller"]["client_id"] async for d in store.messages.find({}, {"caller": 1})}
    assert callers == {client.client_id}  # every request carried the client's token


async def test_private_key_jwt_client_and_token_renewal(
    hub: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await register(store, "RBL", ["system/hl7v2.c"], key="ES256")
    assert client.private_key is not None
    pem = tmp_path / "rbl.pem"
    pem.write_bytes(
        client.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "rbl.hl7").write_bytes(message("K1") + message("K2", "ADT^A01"))
    run = await replay(capsys, tmp_path / "rbl.hl7", "--http", hub, "--client-id", client.client_id,
                       "--private-key", pem, "--key-id", client.kid or "")  # fmt: skip
    assert run.code == 0, run
    assert await stored(store, status="ready", **{"caller.client_id": client.client_id}) == 2

    # the token is renewed before it expires (80 % of a short lifetime): a second assertion, a new token
    now = [0.0]
    async with aiohttp.ClientSession() as session:
        credentials = Credentials(client.client_id, None, client.private_key, client.kid)
        tokens = TokenSource(session, hub, credentials, clock=lambda: now[0])
        first = await tokens.header()
        now[0] = 230.0  # a 300 s token is kept until 30 s before it expires
        assert await tokens.header() == first and tokens.issued == 1
        now[0] = 271.0
        assert await tokens.header() != first and tokens.issued == 2
    assert await store.used_assertions.count_documents({}) == 3  # the command's and these two


async def test_a_refused_secret_is_a_usage_error(hub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rbl.hl7").write_bytes(message("X1"))
    run = await replay(capsys, tmp_path / "rbl.hl7", "--http", hub, "--client-id", "nobody", "--client-secret", "x")
    assert run.code == 2
    assert "refused the client (401)" in run.err and "check --client-id" in run.err


# --- pace, concurrency, progress -------------------------------------------------------------------------


async def test_rate_spaces_messages_evenly(
    intake: IntakeService, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.hl7").write_bytes(b"".join(message(f"R{n}", "ADT^A01") for n in range(11)))
    started = time.monotonic()
    run = await replay(capsys, tmp_path / "log.hl7", "--port", intake.mllp.port, "--rate", "20", "--json")
    elapsed = time.monotonic() - started
    assert run.code == 0, run
    assert 0.45 <= elapsed < 5, elapsed  # 10 intervals of 50 ms between 11 messages
    received = [d["received_at"] async for d in store.messages.find({}).sort("received_at", 1)]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(received)]
    assert min(gaps) >= 0.03, gaps  # smooth: no burst


async def test_concurrency_deals_messages_to_that_many_connections(
    intake: IntakeService, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.hl7").write_bytes(b"".join(message(f"N{n:02d}", "ADT^A01") for n in range(12)))
    run = await replay(capsys, tmp_path / "log.hl7", "--port", intake.mllp.port, "--concurrency", "3", "--json")
    assert run.code == 0 and run.summary()["accepted"] == 12, run
    by_peer: dict[str, set[str]] = {}
    async for doc in store.messages.find({}):
        by_peer.setdefault(doc["peer"], set()).add(doc["header"]["control_id"])
    # three connections, each dealt every third message of the log
    assert sorted(sorted(ids) for ids in by_peer.values()) == [
        [f"N{n:02d}" for n in range(first, 12, 3)] for first in range(3)
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_progress_line_shows_count_rate_and_eta_on_a_terminal_only(
    intake: IntakeService, tmp_path: Path
) -> None:
    (tmp_path / "log.hl7").write_bytes(b"".join(message(f"P{n}", "ADT^A01") for n in range(4)))
    found = sources([str(tmp_path / "log.hl7")])
    options = Options(port=intake.mllp.port, failures=tmp_path / "f.jsonl")
    terminal, pipe = Terminal(), io.StringIO()
    assert await Replay(options, found, io.StringIO(), terminal).run() == 0
    assert "msg/s" in terminal.getvalue() and "ETA" in terminal.getvalue()
    assert await Replay(options, found, io.StringIO(), pipe).run() == 0
    assert pipe.getvalue() == ""
    quiet = Options(port=intake.mllp.port, quiet=True, failures=tmp_path / "f.jsonl")
    terminal = Terminal()
    assert await Replay(quiet, found, io.StringIO(), terminal).run() == 0
    assert terminal.getvalue() == ""


def test_reading_streams_a_large_gzip_log_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.hl7.gz"
    with gzip.open(path, "wb") as out:
        for n in range(20_000):
            out.write(message(f"M{n:06d}", "ADT^A01") + b"\n")
    size = sum(len(message(f"M{n:06d}", "ADT^A01")) for n in range(20_000))
    tracemalloc.start()
    count = sum(1 for _ in read_all(sources([str(path)]), False, Reading()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000
    assert peak < 2_000_000 < size, (peak, size)  # a fraction of the 5 MB log


# --- dry run -------------------------------------------------------------------------------------------------


async def test_a_dry_run_names_what_a_referral_produces_and_why_a_message_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.hl7").write_bytes(message("D1") + message("D2", "ZZZ^Z99"))
    (tmp_path / "stray.hl7").write_bytes(b"PID|1||x\r")
    run = await replay(capsys, tmp_path, "--dry-run")
    assert run.code == 1, run  # one would fail: exit 1
    assert "nothing was sent" in run.out
    produced = next(line for line in run.out.splitlines() if line.strip().startswith("produces:"))
    for name in ("Patient 1", "ServiceRequest 1", "Encounter 1", "CarePlan 1", "Condition 1"):
        assert name in produced
    assert "ZZZ^Z99: 1 messages, 0 would map" in run.out and "not" in run.out
    assert "intake refuses it (AR, code 100" in run.out  # the stray PID without MSH

    as_json = await replay(capsys, tmp_path, "--dry-run", "--json")
    report = json.loads(as_json.out)
    assert report["mapped"] == 1 and report["failed"] == 2
    assert report["by_message_type"]["REF^I12"]["resources"]["ServiceRequest"] == 1


async def test_a_dry_run_predicts_the_refusal_of_a_long_identifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Intake refuses an identifier over an index key's size before it answers; so does the dry run."""
    long_pid = message("D3").replace(b"~XD3^", b"~" + b"P" * 1500 + b"^")  # PID-3's local number
    assert b"~" + b"P" * 1500 + b"^^^RBL^MR|" in long_pid
    (tmp_path / "log.hl7").write_bytes(long_pid)
    run = await replay(capsys, tmp_path, "--dry-run", "--json")
    assert run.code == 1, run
    failures = run.summary()["by_message_type"]["REF^I12"]["failures"]  # type: ignore[index]
    [reason] = failures
    assert reason.startswith("intake refuses it (AR, code 102 at PID-3)"), reason
    assert "1500 bytes" in reason


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MSCC_LIMIT_SEGMENTS", "10"),
        ("MSCC_LIMIT_TRANSACTION_BYTES", str(1024 * 1024)),
        ("MSCC_MLLP_MAX_MESSAGE_BYTES", "100000"),
    ],
)
async def test_a_dry_run_predicts_the_refusals_of_intakes_limits(
    setting: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limits intake refuses by (segments, the write estimate, the size) are the dry run's too: a
    referral with twelve notes of 20 KB maps under the defaults and is refused under each lower limit."""
    notes = "".join(f"NTE|{n}||{'note ' * 4000}\r" for n in range(1, 13)).encode()
    (tmp_path / "log.hl7").write_bytes(message("D4") + notes)
    run = await replay(capsys, tmp_path, "--dry-run")
    assert run.code == 0 and "REF^I12: 1 messages, 1 would map" in run.out, run.out
    monkeypatch.setenv(setting, value)
    run = await replay(capsys, tmp_path, "--dry-run")
    assert run.code == 1, run
    assert "REF^I12: 1 messages, 0 would map" in run.out
    assert "intake refuses it (AR" in run.out and setting in run.out, run.out


# --- resume, failures, exit status -----------------------------------------------------------------------


async def test_resume_skips_what_was_acknowledged_after_a_sender_was_refused(
    settings: Settings, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBZ", "message_types": ["ADT^A01"]}]}))
    log = tmp_path / "log.hl7"
    log.write_bytes(message("A1") + message("A2", sender="RBZ") + message("A3", "ADT^A01", "RBZ") + message("A4"))
    journal = tmp_path / "replay.journal"
    strict = IntakeService(settings.model_copy(update={"senders_file": senders}), store)
    await strict.start()
    try:
        first = await replay(capsys, log, "--port", strict.mllp.port, "--resume", journal)
    finally:
        await strict.stop()
    assert first.code == 1, first
    table = {line.split()[0]: line.split()[1:] for line in first.out.splitlines() if line.strip()}
    assert table["REF^I12"] == ["3", "2", "0", "1", "0"] and table["RBZ"] == ["2", "1", "0", "1", "0"]
    [failure] = [json.loads(line) for line in (tmp_path / "replay-failures.jsonl").read_text().splitlines()]
    assert failure["control_id"] == "A2" and failure["answer"] == "AR" and failure["sender"] == "RBZ"
    assert "REF^I12" in failure["reason"] and failure["source"] == str(log)
    assert len(journal.read_text().splitlines()) == 3

    lenient = IntakeService(settings, store)  # the sender's configuration corrected
    await lenient.start()
    try:
        second = await replay(capsys, log, "--port", lenient.mllp.port, "--resume", journal, "--json")
    finally:
        await lenient.stop()
    assert second.code == 0, second
    assert second.summary()["skipped"] == 3 and second.summary()["accepted"] == 1
    assert await stored(store, status="ready") == 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.hl7"], "no such file or folder"),
        (["bad.gz"], "not a readable gzip file"),
        (["ok.hl7", "--port", "2575", "--http", "http://127.0.0.1:1"], "not both"),
        (["fhir.ndjson"], "add --http URL"),
        (["ok.hl7", "--client-id", "abc"], "add --http URL"),
        (["ok.hl7", "--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
async def test_usage_errors_exit_2_saying_what_to_fix(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    (tmp_path / "fhir.ndjson").write_text(json.dumps(referral("U1")) + "\n")
    (tmp_path / "ok.hl7").write_bytes(message("U1"))
    run = await replay(capsys, *args)
    assert run.code == 2 and says in run.err, run


async def test_nothing_listening_exits_1_and_a_capture_with_junk_reports_it(
    intake: IntakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.hl7").write_bytes(message("U1"))
    run = await replay(capsys, tmp_path / "ok.hl7", "--port", free_port())
    assert run.code == 1 and "is the hub running?" in run.err, run
    dead = f"http://127.0.0.1:{free_port()}"
    run = await replay(capsys, tmp_path / "ok.hl7", "--http", dead, "--client-id", "a", "--client-secret", "b")
    assert run.code == 1 and "no token" in run.err and "is the hub running?" in run.err, run

    (tmp_path / "cut.mllp").write_bytes(frame(message("J1")) + b"garbage" + START_BLOCK + b"MSH|^~\\&|cut")
    run = await replay(capsys, tmp_path / "cut.mllp", "--port", intake.mllp.port, "--failures", tmp_path / "f.jsonl")
    assert run.code == 1, run
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert reasons == [
        "bytes outside an MLLP frame (no start block 0x0B)",
        "an MLLP frame without its end (FS CR): the capture is cut short",
    ]


def test_help_says_what_it_is_for_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "Replay message logs to the hub" in out and "examples:" in out
    assert "mscc replay logs/ --dry-run" in out and "MSCC_REPLAY_CLIENT_SECRET" in out
