"""The local mongod starts again on its own data: same port when free, renamed member when not."""

from __future__ import annotations

import os
from pathlib import Path

from pymongo import MongoClient

from shared.mongod import PORT_FILE, LocalMongod, find_mongod, free_port


def _binary() -> Path:
    return find_mongod(Path(os.environ.get("MSCC_CACHE_DIR", Path.home() / ".cache" / "mscc")))


def _count(uri: str) -> int:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        return client.restart_check.items.count_documents({})
    finally:
        client.close()


def test_restart_on_same_data_keeps_port_and_data(tmp_path: Path) -> None:
    dbpath = tmp_path / "db"
    first = LocalMongod(_binary(), dbpath)
    first.start(timeout_s=30)
    try:
        client: MongoClient[dict[str, object]] = MongoClient(first.uri, serverSelectionTimeoutMS=5000)
        client.restart_check.items.insert_one({"kept": True})
        client.close()
    finally:
        first.stop()
    assert (dbpath / PORT_FILE).read_text() == str(first.port)

    again = LocalMongod(_binary(), dbpath)
    assert again.port == first.port
    again.start(timeout_s=20)
    try:
        assert _count(again.uri) == 1
    finally:
        again.stop()


def test_restart_on_another_port_renames_the_member(tmp_path: Path) -> None:
    dbpath = tmp_path / "db"
    first = LocalMongod(_binary(), dbpath)
    first.start(timeout_s=30)
    try:
        client: MongoClient[dict[str, object]] = MongoClient(first.uri, serverSelectionTimeoutMS=5000)
        client.restart_check.items.insert_one({"kept": True})
        client.close()
    finally:
        first.stop()

    # The remembered port is taken by someone else: the restart must still become PRIMARY, quickly.
    moved = LocalMongod(_binary(), dbpath, port=free_port())
    assert moved.port != first.port
    moved.start(timeout_s=20)
    try:
        assert _count(moved.uri) == 1
    finally:
        moved.stop()
