"""Batch and file envelopes (FHS/BHS ... BTS/FTS): splitting one frame or body into its messages.

A frame that starts with FHS or BHS, or that holds more than one MSH, is an envelope; each MSH starts a
message. Missing trailers (BTS, FTS) or a missing BHS are tolerated. A segment before the first MSH of a
batch, a second BHS before BTS, or a second FHS reject the whole envelope (``Rejection``, code 100).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.er7 import UTF8_BOM, SegmentSpan

from .header import SEGMENT_SEQUENCE_ERROR, Rejection

_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass
class Envelope:
    """The messages of one frame; ``is_batch`` when it came in FHS/BHS or held several messages."""

    messages: list[list[SegmentSpan]] = field(default_factory=list)
    is_batch: bool = False
    has_file_header: bool = False
    header_span: SegmentSpan | None = None


def _name(data: bytes, span: SegmentSpan) -> bytes:
    raw = data[span.start : span.end]
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    return raw.lstrip()[:3]


def split_envelope(data: bytes, spans: list[SegmentSpan]) -> Envelope:
    """Group ``spans`` into messages; a plain message comes back as an envelope of one."""
    names = [_name(data, s) for s in spans]
    if not spans or (not any(n in _ENVELOPE for n in names) and names.count(b"MSH") <= 1):
        return Envelope(messages=[spans])
    env = Envelope(is_batch=True)
    in_batch = False
    seen_file_header = False
    current: list[SegmentSpan] | None = None
    for number, (name, span) in enumerate(zip(names, spans, strict=True), start=1):
        if name == b"FHS":
            if seen_file_header or number != 1:
                raise Rejection(
                    SEGMENT_SEQUENCE_ERROR, "file cannot have more than one FHS segment", location=f"segment {number}"
                )
            seen_file_header = True
            env.has_file_header = True
            env.header_span = span
            current = None
        elif name == b"BHS":
            if in_batch:
                raise Rejection(
                    SEGMENT_SEQUENCE_ERROR, "batch cannot have more than one BHS segment", location=f"segment {number}"
                )
            in_batch = True
            env.header_span = env.header_span or span
            current = None
        elif name in (b"BTS", b"FTS"):
            in_batch = in_batch and name != b"BTS"
            current = None
        elif name == b"MSH":
            current = [span]
            env.messages.append(current)
        elif current is None:
            raise Rejection(
                SEGMENT_SEQUENCE_ERROR,
                f"segment received before message header: segment {number} "
                f"{name.decode('latin-1')!r} precedes the first MSH",
                location=f"segment {number}",
            )
        else:
            current.append(span)
    return env
