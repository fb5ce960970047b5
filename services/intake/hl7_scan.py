"""The first, pure step of reading an HL7v2 frame: what its bytes alone decide.

The frame's segment and repetition limits, its segments and envelope, and for each message the lean
read (``header.read_message``), the record and write estimates and the length of its identifiers
(``limits_check``) and the content digest of its duplicate key. This work grows with the frame
(seconds for 4 MB of tiny segments), so intake runs it in its parse pool for large frames
(``offload.py``) and inline for small ones; it uses no clock, no database and no configuration beyond
its arguments, so both give the same answer. What it returns is small and picklable: a refusal as plain
data (``Refusal``), never the segment spans.
What needs the sender policy, the caller or the store (trust, ACK, record) stays with ``hl7_intake``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.er7 import SegmentSpan, segment_spans
from shared.limits import Limits
from shared.messages import RAW_FROM_TEXT_BYTES, text_encodes_to

from .envelope import split_envelope
from .header import HeaderRead, MessageHeader, Rejection, read_header_fields, read_message
from .hl7_keys import content_digest
from .limits_check import check_identifiers, check_message, first_header, frame_refusal


@dataclass(frozen=True)
class Refusal:
    """A ``Rejection`` as data (an exception with keyword arguments does not survive pickling)."""

    code: int
    reason: str
    location: str = ""
    ack: str = "AR"

    @classmethod
    def of(cls, rejection: Rejection) -> Refusal:
        return cls(rejection.code, rejection.reason, rejection.location, rejection.ack)

    def rejection(self) -> Rejection:
        return Rejection(self.code, self.reason, location=self.location, ack=self.ack)


@dataclass(frozen=True)
class MessageScan:
    """One message of a frame: its bytes ``start:stop``, the header to answer (None if unreadable), and
    either its lean read and content digest, or why it is refused."""

    start: int
    stop: int
    header: MessageHeader | None
    read: HeaderRead | None
    refusal: Refusal | None = None
    digest: str = ""
    # A large accepted message whose text encodes back to exactly ``start:stop``: its record keeps the
    # text alone (``shared.messages.RAW_FROM_TEXT_BYTES``). Checked here, in the pool for large frames.
    text_is_raw: bool = False

    def accepted(self) -> HeaderRead:
        """The lean read; ``Rejection`` if the message is refused."""
        if self.read is None:
            raise (self.refusal or Refusal(100, "the message could not be read")).rejection()
        return self.read


@dataclass(frozen=True)
class FrameScan:
    """A frame refused whole (``refusal``, addressed to ``header``; ``envelope`` when its batch envelope
    is malformed, which is answered in original mode), or its messages."""

    header: MessageHeader | None = None
    refusal: Refusal | None = None
    envelope: bool = False
    messages: tuple[MessageScan, ...] = ()
    is_batch: bool = False
    file_header: bool = False


def try_header(data: bytes, spans: list[SegmentSpan]) -> MessageHeader | None:
    """The first readable MSH of a frame, to address a rejection to its sender."""
    for span in spans:
        raw = data[span.start : span.end].lstrip(b"\xef\xbb\xbf \t")
        if raw.startswith(b"MSH"):
            try:
                return read_header_fields(raw.decode("latin-1"))
            except Rejection:
                return None
    return None


def header_of(data: bytes) -> MessageHeader | None:
    """The first readable MSH anywhere in ``data`` (the kept head of an oversize frame)."""
    return try_header(data, segment_spans(data))


def scan_message(
    data: bytes, spans: list[SegmentSpan], start: int, stop: int, charsets: tuple[str, str, str | None], limits: Limits
) -> MessageScan:
    """Read one message of ``data`` (``spans`` its segments, ``start:stop`` the bytes kept for it);
    ``charsets``: the default, the fallback and the one an HTTP Content-Type forces."""
    default_charset, fallback_charset, forced_charset = charsets
    header: MessageHeader | None = None
    try:
        read = read_message(
            data,
            spans,
            default_charset=default_charset,
            fallback_charset=fallback_charset,
            forced_charset=forced_charset,
        )
        header = read.header
        check_message(data[start:stop], read.text, len(spans), limits)
        check_identifiers(data, spans, read)
    except Rejection as rejection:
        return MessageScan(start, stop, header or try_header(data, spans), None, Refusal.of(rejection))
    exact = stop - start >= RAW_FROM_TEXT_BYTES and text_encodes_to(read.text, read.charset, data[start:stop])
    return MessageScan(start, stop, header, read, None, content_digest(data, spans, header), exact)


def scan_frame(data: bytes, charsets: tuple[str, str, str | None], limits: Limits) -> FrameScan:
    """Everything the bytes of one frame decide, before the sender policy and the store."""
    refused = frame_refusal(data, limits)  # before any parse: a count of bytes
    if refused is not None:
        return FrameScan(first_header(data), Refusal.of(refused))
    spans = segment_spans(data)
    try:
        envelope = split_envelope(data, spans)
    except Rejection as rejection:
        return FrameScan(try_header(data, spans), Refusal.of(rejection), envelope=True)
    if not envelope.is_batch:
        return FrameScan(messages=(scan_message(data, spans, 0, len(data), charsets, limits),))
    messages = tuple(
        scan_message(data, message, message[0].start, message[-1].stop, charsets, limits)
        for message in envelope.messages
    )
    return FrameScan(messages=messages, is_batch=True, file_header=envelope.has_file_header)
