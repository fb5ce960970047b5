"""Lean reading and writing of HL7v2 ER7 (pipe-and-hat) text, without a full parse.

Segments may end in CR, LF or CRLF on input (senders differ); empty segments are ignored. Everything
here works on bytes where it must stay byte-exact: separators and segment ids are ASCII in every
character set the hub accepts (UTF-8, ISO 8859-x, Windows-1252), so splitting bytes is safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_HEADER = re.compile(rb"(?:MSH|BHS|FHS)(.)", re.DOTALL)
_SEGMENT_START = re.compile(rb"[A-Z][A-Z0-9]{2}")
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Separators:
    """The field separator (MSH-1) and the encoding characters (MSH-2) of one message."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def escape_text(self, value: str) -> str:
        """Escape ``value`` for use as one ER7 component (HL7 v2 section 2.7)."""
        esc = self.escape
        # Most texts (an ACK's ERR and MSA texts, once per message) hold nothing to escape: seven
        # searches cost a fifth of seven replacements.
        if (
            esc not in value
            and self.field not in value
            and self.component not in value
            and self.subcomponent not in value
            and self.repetition not in value
            and "\r" not in value
            and "\n" not in value
        ):
            return value
        out = value.replace(esc, f"{esc}E{esc}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            out = out.replace(char, f"{esc}{code}{esc}")
        return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")


DEFAULT_SEPARATORS = Separators()


class SegmentSpan(NamedTuple):
    """Where one non-empty segment lies in a message's bytes: ``data[start:end]``, terminator to ``stop``.

    A named tuple, not a dataclass: a message has one per segment, and intake makes them for every
    message it reads."""

    start: int
    end: int
    stop: int

    def name(self, data: bytes) -> bytes:
        return data[self.start : self.start + 3]


def field_separator_of(data: bytes) -> bytes:
    """The field separator of the first header segment (MSH, BHS or FHS) in ``data``; "|" if none."""
    match = _HEADER.search(data)
    return match.group(1) if match else b"|"


def segment_spans(data: bytes, start: int = 0) -> list[SegmentSpan]:
    """Every non-empty segment of ``data`` from ``start``.

    CR (and CRLF) always ends a segment, as the standard says. A bare LF, or a CR LF pair, ends one
    only when what follows starts like a segment (``[A-Z][A-Z0-9]{2}`` then the field separator or the
    line's end): senders that wrap long text with line feeds keep their text in its field.
    """
    if b"\n" not in data:
        return _cr_spans(data, start)
    fs = field_separator_of(data)
    boundary = re.compile(rb"\r\n?|\n(?=[A-Z][A-Z0-9]{2}(?:" + re.escape(fs) + rb"|\r|\n|$))")
    spans: list[SegmentSpan] = []
    pos = start
    for match in boundary.finditer(data, start):
        if match.group() == b"\r\n" and not _starts_segment(data, match.end(), fs):
            # CR LF followed by text that is not a segment: the LF-wrapped text continues.
            continue
        _add_span(data, pos, match.start(), match.end(), spans)
        pos = match.end()
    _add_span(data, pos, len(data), len(data), spans)
    return spans


def _cr_spans(data: bytes, start: int) -> list[SegmentSpan]:
    """The common case, segments ended by CR alone: a plain split (the hot path of intake)."""
    spans: list[SegmentSpan] = []
    pos = start
    size = len(data)
    for piece in data[start:].split(b"\r"):
        end = pos + len(piece)
        if piece and not piece.isspace():
            lead = len(piece) - len(piece.lstrip(b" \t"))
            stop = end + 1 if end < size else size  # the last piece has no CR after it
            spans.append(SegmentSpan(pos + lead, end, stop))
        pos = end + 1
    return spans


def _starts_segment(data: bytes, pos: int, fs: bytes) -> bool:
    ahead = data[pos : pos + 4]
    if not ahead:
        return True
    return bool(_SEGMENT_START.match(ahead)) and (len(ahead) < 4 or ahead[3:4] in (fs, b"\r", b"\n"))


def _add_span(data: bytes, start: int, end: int, stop: int, spans: list[SegmentSpan]) -> None:
    while start < end and data[start : start + 1] in (b"\n", b" ", b"\t"):
        start += 1  # stray line feeds between segments
    if start < end and data[start:end].strip():
        spans.append(SegmentSpan(start, end, stop))


def split_fields(segment: str, field_separator: str) -> list[str]:
    return segment.split(field_separator)


def first_component(value: str, separators: Separators) -> str:
    return value.split(separators.repetition, 1)[0].split(separators.component, 1)[0]


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")


def split_message_log(data: bytes) -> list[bytes]:
    """Split a message log (messages one after another, blank lines and ``//`` or ``/* */`` comment lines
    between them) into messages, each starting at an MSH line. Batch envelopes (FHS/BHS) stay whole.
    Line endings are kept as they are; only comment and blank lines between messages are dropped.
    """
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    messages: list[bytearray] = []
    in_comment = False
    for match in _LINE.finditer(data):
        line = match.group()
        if not line:
            continue
        stripped = line.strip()
        if in_comment:
            in_comment = b"*/" not in stripped
            continue
        if stripped.startswith(b"/*"):
            in_comment = b"*/" not in stripped
            continue
        if not stripped or stripped.startswith(b"//"):
            continue
        if stripped[:3] in (b"FHS", b"BHS") and not messages:
            return [data.strip(b"\r\n")]
        if stripped.startswith(b"MSH") or not messages:
            messages.append(bytearray())
        messages[-1] += line
    return [bytes(m) for m in messages]


_ESCAPE_CODES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(value: str, seps: Separators) -> str:
    """Resolve HL7 escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\``) in one value.

    Formatting sequences other than ``.br`` (``\\H\\``, ``\\N\\``, ``\\.sp\\``…) and unknown ones are
    dropped from the text; malformed hex is kept literally rather than guessed at.
    """
    esc = seps.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    pos = 0
    while pos < len(value):
        start = value.find(esc, pos)
        if start < 0:
            out.append(value[pos:])
            break
        end = value.find(esc, start + 1)
        if end < 0:
            out.append(value[pos:])
            break
        out.append(value[pos:start])
        code = value[start + 1 : end]
        if code in _ESCAPE_CODES:
            out.append(getattr(seps, _ESCAPE_CODES[code]))
        elif code == ".br":
            out.append("\n")
        elif code.startswith("X") and len(code) > 1:
            hexa = code[1:]
            try:
                raw = bytes.fromhex(hexa)
            except ValueError:
                out.append(value[start : end + 1])
            else:
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(raw.decode("latin-1"))  # \Xe1\ style single bytes
        pos = end + 1
    return "".join(out)


@dataclass(frozen=True)
class Segment:
    """One segment, split into fields as HL7 numbers them: ``field(1)`` is the first after the id
    (for MSH, ``field(1)`` is MSH-1, the field separator itself)."""

    name: str
    fields: tuple[str, ...]
    seps: Separators

    def field(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        raw = self.field(number)
        if self.name == "MSH" and number in (1, 2):
            return [raw]
        return [r for r in raw.split(self.seps.repetition)] if raw else []

    def components(self, number: int, repetition: int = 0) -> list[str]:
        """The components of one repetition of a field, unescaped (subcomponents kept joined)."""
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return []
        return [unescape(c, self.seps) for c in reps[repetition].split(self.seps.component)]

    def value(self, number: int, component: int = 1, repetition: int = 0) -> str:
        parts = self.components(number, repetition)
        return parts[component - 1] if component - 1 < len(parts) else ""


@dataclass(frozen=True)
class ParsedMessage:
    seps: Separators
    segments: tuple[Segment, ...]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)


def parse_message(text: str) -> ParsedMessage:
    """Split ER7 text into segments and fields (no grammar, no group structure): the mapper's hot path.

    ``ValueError`` if the text does not start with an MSH segment whose separators can be read.
    """
    data = text.encode("utf-8", errors="surrogateescape")
    spans = segment_spans(data)
    lines = [data[s.start : s.end].decode("utf-8", errors="surrogateescape") for s in spans]
    if not lines or not lines[0].lstrip("\ufeff \t").startswith("MSH") or len(lines[0].lstrip("\ufeff \t")) < 8:
        raise ValueError("the message does not start with an MSH segment")
    lines[0] = lines[0].lstrip("\ufeff \t")
    msh = lines[0]
    fs = msh[3]
    enc_end = msh.find(fs, 4)
    enc = msh[4:] if enc_end < 0 else msh[4:enc_end]
    if len(enc) == 5 and enc[2] == enc[3] and enc[4] != "#":
        enc = enc[:3] + enc[4]
    if len(enc) < 4:
        raise ValueError(f"MSH-2 {enc!r} is not a set of encoding characters")
    seps = Separators(fs, enc[0], enc[1], enc[2], enc[3], enc[4:5])
    segments = []
    for line in lines:
        parts = line.split(fs)
        if parts[0] == "MSH":
            parts = ["MSH", fs, enc, *line[4:].split(fs)[1:]]
        segments.append(Segment(parts[0], tuple(parts), seps))
    return ParsedMessage(seps, tuple(segments))
