"""The local mongod starts again on its own data: same port when free, renamed member when not."""

from __future__ import annotations

import os
from pathlib import Path

from pymongo import MongoClient

from shared.mongod import PORT_FILE, LocalMongod, find_mongod, free_port


def _binary() -> Path:
    return find_mongod(Path(os.environ.get("MSCC_CACHE_DIR", Path.home() / ".cache" / "mscc")))


def _client(uri: str) -> MongoClient[dict[str, object]]:
    return MongoClient(uri, serverSelectionTimeoutMS=5000)


def _first_run(dbpath: Path) -> int:
    """Start on a new dbpath, store one document, stop; the port it ran on."""
    first = LocalMongod(_binary(), dbpath)
    first.start(timeout_s=30)
    try:
        with _client(first.uri) as client:
            client.restart_check.items.insert_one({"kept": True})
    finally:
        first.stop()
    return first.port


def _restart_and_count(server: LocalMongod) -> int:
    server.start(timeout_s=20)
    try:
        with _client(server.uri) as client:
            return client.restart_check.items.count_documents({})
    finally:
        server.stop()


def test_restart_on_same_data_keeps_port_and_data(tmp_path: Path) -> None:
    dbpath = tmp_path / "db"
    port = _first_run(dbpath)
    assert (dbpath / PORT_FILE).read_text() == str(port)
    again = LocalMongod(_binary(), dbpath)
    assert again.port == port
    assert _restart_and_count(again) == 1


def test_restart_on_another_port_renames_the_member(tmp_path: Path) -> None:
    dbpath = tmp_path / "db"
    port = _first_run(dbpath)
    # The remembered port is taken by someone else: the restart must still become PRIMARY, quickly.
    moved = LocalMongod(_binary(), dbpath, port=free_port())
    assert moved.port != port
    assert _restart_and_count(moved) == 1
