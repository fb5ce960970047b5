"""Lean reading and writing of HL7v2 ER7 (pipe-and-hat) text, without a full parse.

Segments may end in CR, LF or CRLF on input (senders differ); empty segments are ignored. Everything
here works on bytes where it must stay byte-exact: separators and segment ids are ASCII in every
character set the hub accepts (UTF-8, ISO 8859-x, Windows-1252), so splitting bytes is safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SegmentSpan:
    """Where one non-empty segment lies in a message's bytes: ``data[start:end]``, terminator to ``stop``."""

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
