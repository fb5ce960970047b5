"""``mscc clients`` as an operator runs it: a real process on the test database, and the clients it
registers, rotates and revokes getting (or no longer getting) real tokens from the hub."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_cli import mscc_env
from tokens import TestClient, new_key, public_pem, register, request_token

from services.cli import main
from shared.settings import Settings
from shared.store import Store


def clients(tmp_path: Path, mongodb_uri: str, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "clients", *args],
        env=mscc_env(tmp_path, MONGODB_URI=mongodb_uri, MSCC_DB_NAME=settings.db_name),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_add_and_list(
    tmp_path: Path, mongodb_uri: str, settings: Settings, store: Store, http: httpx.AsyncClient
) -> None:
    added = clients(tmp_path, mongodb_uri, settings, "add", "rbl-engine", "--ods", "rbl", "--scope", "system/*.rs")
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["ods_code"] == "RBL" and shown["scopes"] == ["system/*.rs"] and shown["client_secret"]
    assert "shown this once" in added.stderr
    stored = await store.clients.find_one({"_id": shown["client_id"]})
    assert stored is not None and shown["client_secret"] not in json.dumps(stored, default=str)
    engine = TestClient(shown["client_id"], "rbl-engine", "RBL", ("system/*.rs",), secret=shown["client_secret"])
    assert (await request_token(http, engine)).status_code == 200

    pem = tmp_path / "epr.pem"
    pem.write_text(public_pem(new_key("ES256")))
    keyed = clients(tmp_path, mongodb_uri, settings, "add", "rjr-epr", "--ods", "RJR", "--public-key", str(pem))
    assert keyed.returncode == 0, keyed.stderr
    assert "client_secret" not in json.loads(keyed.stdout)
    assert json.loads(keyed.stdout)["auth_method"] == "private_key_jwt"

    listed = clients(tmp_path, mongodb_uri, settings, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["name", "client_id", "ods", "auth"]
    assert rows[0].startswith("rbl-engine") and rows[1].startswith("rjr-epr") and "2 client(s)" in rows[-1]
    as_json = json.loads(clients(tmp_path, mongodb_uri, settings, "list", "--json").stdout)
    assert [c["name"] for c in as_json] == ["rbl-engine", "rjr-epr"]
    assert "system/ServiceRequest.cu" in as_json[1]["scopes"]  # the default scopes


async def test_rotate_and_revoke(
    tmp_path: Path, mongodb_uri: str, settings: Settings, store: Store, http: httpx.AsyncClient
) -> None:
    engine = await register(store, "RBL", ["system/*.rs"], name="rbl-engine")
    rotated = clients(tmp_path, mongodb_uri, settings, "rotate", "rbl-engine")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = json.loads(rotated.stdout)["client_secret"]
    assert (await request_token(http, engine)).status_code == 401
    renewed = TestClient(engine.client_id, engine.name, "RBL", engine.scopes, secret=new_secret)
    assert (await request_token(http, renewed)).status_code == 200

    revoked = clients(tmp_path, mongodb_uri, settings, "revoke", "rbl-engine")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert (await request_token(http, renewed)).status_code == 401
    record = await store.clients.find_one({"_id": engine.client_id})
    assert record is not None and record["revoked_at"] is not None


async def test_refusals_say_what_to_fix(
    tmp_path: Path,
    mongodb_uri: str,
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same command in this process (its own event loop, in a thread): each refusal's exit code and text."""
    monkeypatch.setenv("MONGODB_URI", mongodb_uri)
    monkeypatch.setenv("MSCC_DB_NAME", settings.db_name)
    monkeypatch.setenv("MSCC_STATE_DIR", str(tmp_path / "state"))

    async def run(*args: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, ["clients", *args])
        return code, capsys.readouterr().err

    assert (await run("add", "rbl-engine", "--ods", "RBL"))[0] == 0
    code, err = await run("add", "rbl-engine", "--ods", "RBL")
    assert (
        code == 1 and err == "mscc clients add: a client named 'rbl-engine' exists already (see 'mscc clients list')\n"
    )
    code, err = await run("add", "x", "--ods", "RBL", "--scope", "user/*.read")
    assert code == 1 and "not a SMART system scope" in err
    code, err = await run("add", "x", "--ods", "R B L")
    assert code == 1 and "ODS code 'R B L'" in err
    code, err = await run("revoke", "nobody")
    assert code == 1 and "no client named 'nobody'" in err
    code, err = await run("add", "y", "--ods", "RBL", "--public-key", str(tmp_path / "missing.pem"))
    assert code == 2 and "cannot read" in err
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_text("not a key")
    code, err = await run("add", "z", "--ods", "RBL", "--public-key", str(bad_pem))
    assert code == 1 and "not a PEM public key" in err
    keyed = tmp_path / "key.pem"
    keyed.write_text(public_pem(new_key("ES256")))
    assert (await run("add", "k", "--ods", "RBL", "--public-key", str(keyed)))[0] == 0
    code, err = await run("rotate", "k")
    assert code == 1 and "authenticates with a key" in err
    with pytest.raises(SystemExit):
        main(["clients", "add", "--help"])
    assert "examples:" in capsys.readouterr().out
    assert await store.clients.count_documents({}) == 2
