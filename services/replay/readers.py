"""Readers: files in, ``Item``s out, one at a time (generators), so memory stays bounded by the largest
message or batch, never by the size of a file.

Three forms are read:

- ER7 message logs: messages one after another, segments ended by CR, LF or CRLF, blank lines and
  ``//`` or ``/* */`` comments between them. Each message is cleaned by ``shared.er7.split_message_log``
  (the hub's own reading of a log). A batch (FHS/BHS ... BTS/FTS) is one item, or with ``split_batches``
  each of its messages is;
- MLLP captures (``VT ... FS CR`` frames, found by their first byte): each frame is one item (a frame
  with several messages is sent as the batch it is), or split like a log with ``split_batches``;
- NDJSON of FHIR (``.ndjson``, ``.jsonl``): each line a resource (posted to ``/fhir/{type}``) or a
  Bundle (posted to ``/fhir``).

Bytes that make no sendable unit (outside a frame, a line that is not a JSON resource) become an item
with its ``problem``, which the replay reports as a failure instead of sending.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from shared.er7 import split_message_log
from shared.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from .files import CHUNK, Source, opened
from .items import FHIR, HL7V2, Described, Item, describe_hl7

_EOL = re.compile(rb"\r\n|\r|\n")
_BLANK = b" \t\r\n"
_TRAILER = {b"FHS": b"FTS", b"BHS": b"BTS"}
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_UNREADABLE = (Described("(unreadable)", "?"),)


@dataclass
class Reading:
    """How far the replay has read its files (bytes on disk), for the progress line's ETA."""

    total: int = 0
    finished: int = 0
    current: int = 0

    @property
    def done(self) -> int:
        return self.finished + self.current


def lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each line of the stream with its ending (CR, LF or CRLF, even split across chunks) and offset."""
    buf = bytearray()
    base = 0
    for chunk in chunks:
        buf += chunk
        start = 0
        while (match := _EOL.search(buf, start)) is not None:
            if match.group() == b"\r" and match.end() == len(buf):
                break  # perhaps the CR of a CRLF whose LF is in the next chunk
            yield base + start, bytes(buf[start : match.end()])
            start = match.end()
        del buf[:start]
        base += start
    if buf:
        yield base, bytes(buf)


@dataclass
class _Grouper:
    """Gathers lines into messages and batches (see the module's docstring)."""

    split_batches: bool
    batch: bytes = b""  # the opening segment (FHS/BHS) of the batch being read, else empty
    in_comment: bool = False
    offset: int = 0
    unit: bytearray = field(default_factory=bytearray)

    def flush(self) -> Iterator[tuple[int, bytes]]:
        if self.unit:
            data, self.unit = bytes(self.unit), bytearray()
            for part in split_message_log(data):
                yield self.offset, part

    def start(self, offset: int, line: bytes) -> Iterator[tuple[int, bytes]]:
        yield from self.flush()
        self.offset, self.unit = offset, bytearray(line)

    def feed(self, offset: int, line: bytes) -> Iterator[tuple[int, bytes]]:
        stripped = line.strip()
        name = stripped[:3]
        if not self.batch:
            if self.in_comment or stripped.startswith(b"/*"):
                self.in_comment = b"*/" not in stripped
                return
            if not stripped or stripped.startswith(b"//"):
                return
            if name in _TRAILER:
                self.batch = name
                yield from self.flush()
                if not self.split_batches:
                    yield from self.start(offset, line)
                return
            if name == b"MSH" or not self.unit:
                yield from self.start(offset, line)
            else:
                self.unit += line
            return
        closes = name == _TRAILER[self.batch]
        if not self.split_batches:
            self.unit += line
            if closes:
                self.batch = b""
                yield from self.flush()
            return
        if name in _ENVELOPE or not stripped:
            if name in (b"BTS", b"FTS"):
                yield from self.flush()
            self.batch = b"" if closes else self.batch
            return
        if name == b"MSH" or not self.unit:
            yield from self.start(offset, line)
        else:
            self.unit += line


def er7_units(chunks: Iterable[bytes], split_batches: bool, base: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, message or batch) of an ER7 stream, in order."""
    grouper = _Grouper(split_batches)
    for offset, line in lines(chunks):
        yield from grouper.feed(base + offset, line)
    yield from grouper.flush()


def frames(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes, str]]:
    """(offset, frame body, problem) of an MLLP capture: a problem (with the bytes) for anything that is
    not a complete frame."""
    buf = bytearray()
    base = 0
    for chunk in chunks:
        buf += chunk
        while True:
            start = buf.find(START_BLOCK)
            if start < 0:
                if buf.strip(_BLANK):
                    yield base, bytes(buf), "bytes outside an MLLP frame (no start block 0x0B)"
                base += len(buf)
                buf.clear()
                break
            if buf[:start].strip(_BLANK):
                yield base, bytes(buf[:start]), "bytes outside an MLLP frame (no start block 0x0B)"
            end = buf.find(END_BLOCK + CARRIAGE_RETURN, start)
            if end < 0:
                del buf[:start]
                base += start
                break
            yield base + start + 1, bytes(buf[start + 1 : end]), ""
            del buf[: end + 2]
            base += end + 2
    if buf.strip(_BLANK):
        yield base, bytes(buf), "an MLLP frame without its end (FS CR): the capture is cut short"


def _hl7_item(source: str, offset: int, data: bytes) -> Item:
    return Item(source, offset, HL7V2, data, describe_hl7(data))


def _ndjson_item(source: str, offset: int, line: bytes) -> Item:
    try:
        resource = json.loads(line)
    except ValueError as exc:
        return Item(source, offset, FHIR, line, _UNREADABLE, "", f"the line is not JSON: {exc}")
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(kind, str) or not kind.isalpha():
        return Item(source, offset, FHIR, line, _UNREADABLE, "", "the line is not a FHIR resource (no resourceType)")
    path = "/fhir" if kind == "Bundle" else f"/fhir/{kind}"
    return Item(source, offset, FHIR, line, (Described(kind, "(fhir)"),), path)


def read_source(source: Source, split_batches: bool, reading: Reading) -> Iterator[Item]:
    """Every item of one file, in order."""
    with opened(source) as (stream, raw):

        def chunks() -> Iterator[bytes]:
            while chunk := stream.read(CHUNK):
                reading.current = raw.tell()
                yield chunk

        if source.ndjson:
            for offset, line in lines(chunks()):
                if line.strip():
                    yield _ndjson_item(source.name, offset, line.rstrip(b"\r\n"))
            return
        head = stream.read(CHUNK)
        reading.current = raw.tell()
        body = iter([head])
        if head.lstrip(_BLANK)[:1] != START_BLOCK:  # bytes.strip() would take VT for whitespace
            for offset, data in er7_units(_chain(body, chunks()), split_batches):
                yield _hl7_item(source.name, offset, data)
            return
        for offset, data, problem in frames(_chain(body, chunks())):
            if problem:
                yield Item(source.name, offset, HL7V2, data, _UNREADABLE, problem=problem)
            elif split_batches:
                for inner, message in er7_units([data], True, offset):
                    yield _hl7_item(source.name, inner, message)
            elif data.strip():
                yield _hl7_item(source.name, offset, data)


def _chain(*parts: Iterable[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield from part


def read_all(sources: list[Source], split_batches: bool, reading: Reading) -> Iterator[Item]:
    """Every item of every file, file after file. A file that cannot be read to its end (a gzip cut
    short, a disk error) gives an item with the problem, and the next file is read."""
    reading.total = sum(s.size for s in sources)
    for source in sources:
        reading.current = 0
        try:
            yield from read_source(source, split_batches, reading)
        except (OSError, EOFError, zlib.error) as exc:
            problem = f"the file cannot be read past byte {reading.current} on disk: {exc}"
            yield Item(source.name, -1, HL7V2, b"", _UNREADABLE, problem=problem)
        reading.finished += source.size
        reading.current = 0
