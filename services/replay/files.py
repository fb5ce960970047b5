"""Which files a replay reads, and how each is opened: folders walked, gzip found by its magic bytes.

Everything that would stop a replay before its first message is checked here, up front, as a
``UsageError`` that says what to fix (a missing path, an unreadable gzip, FHIR lines without ``--http``):
a replay that would stop halfway for a bad argument does not start.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

GZIP_MAGIC = b"\x1f\x8b"
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
CHUNK = 64 * 1024


class UsageError(Exception):
    """The command cannot run as given; the message says what to fix (exit status 2)."""


@dataclass(frozen=True)
class Source:
    """One input file: its path, whether it is gzip, whether it holds FHIR NDJSON, and its size on disk."""

    path: Path
    gzipped: bool
    ndjson: bool
    size: int

    @property
    def name(self) -> str:
        return str(self.path)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _check_gzip(path: Path) -> None:
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(CHUNK)
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{path}: not a readable gzip file ({exc}); fix or remove it") from exc


def _source(path: Path) -> Source:
    try:
        gzipped = _is_gzip(path)
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from exc
    if gzipped:
        _check_gzip(path)
    name = path.name.lower().removesuffix(".gz")
    return Source(path, gzipped, name.endswith(NDJSON_SUFFIXES), size)


def sources(paths: list[str]) -> list[Source]:
    """The files named, and every file under the folders named (recursively, in name order; hidden
    files and folders skipped). ``UsageError`` for a path that does not exist or cannot be read."""
    found: list[Source] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not inside:
                raise UsageError(f"{given}: the folder holds no file to replay")
            found += [_source(p) for p in inside]
        elif path.is_file():
            found.append(_source(path))
        else:
            raise UsageError(f"{given}: no such file or folder; give message logs, captures or NDJSON files")
    return found


@contextmanager
def opened(source: Source) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """The decompressed stream of ``source`` and its raw file (whose position says how far it is read)."""
    with source.path.open("rb") as raw:
        if source.gzipped:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(IO[bytes], unzipped), raw
        else:
            yield raw, raw
