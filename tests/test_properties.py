"""Property-based tests of the byte-level readers every inbound message goes through: the MLLP frame
decoder, the ER7 reader, intake's header read and the limits' counts. Any input, any chunking: no
exception escapes, and what is read is what was sent."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.intake.ack import build_ack
from services.intake.header import HeaderRead, MessageHeader, Rejection, read_message
from services.intake.limits_check import first_header, frame_refusal
from shared.er7 import Separators, parse_message, segment_spans, split_message_log, unescape
from shared.limits import Limits, check_fhir_bytes, segments_over
from shared.mllp import END_BLOCK, START_BLOCK, Event, Frame, FrameDecoder, Junk, Oversize

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MAX = 64


def feed(data: bytes, cuts: list[int], max_size: int = MAX) -> tuple[list[Event], FrameDecoder]:
    """Feed ``data`` to a decoder in chunks cut at ``cuts`` (positions, any order)."""
    decoder = FrameDecoder(max_size)
    events: list[Event] = []
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        events += decoder.feed(data[start:cut])
        start = cut
    return events, decoder


def junk_text(events: list[Event]) -> bytes:
    """The non-whitespace bytes reported outside frames (whitespace between frames is not junk)."""
    return b"".join(e.data for e in events if isinstance(e, Junk)).translate(None, b" \t\r\n")


# --- the MLLP frame decoder ----------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=500), max_size=12))
def test_any_bytes_in_any_chunking_decode_without_an_exception_and_alike(data: bytes, cuts: list[int]) -> None:
    whole, _ = feed(data, [])
    chunked, decoder = feed(data, cuts)
    assert [e for e in chunked if isinstance(e, Frame | Oversize)] == [
        e for e in whole if isinstance(e, Frame | Oversize)
    ]
    for event in chunked:
        if isinstance(event, Frame):
            assert len(event.data) <= MAX and event.data in data  # intact, never over the limit
    assert decoder.buffered <= len(data)


# A frame body: anything but a start block, and no end block that a CR or a start block follows (which
# would end the frame there).
body_bytes = st.binary(max_size=120).map(
    lambda b: b.replace(START_BLOCK, b"v").replace(END_BLOCK + b"\r", b"e\r").replace(END_BLOCK, b"e")
)
outside = st.binary(max_size=20).map(lambda b: b.replace(START_BLOCK, b"v"))


@FAST
@given(
    st.lists(st.tuples(outside, body_bytes), max_size=6),
    outside,
    st.one_of(st.none(), body_bytes),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=15),
)
def test_every_complete_frame_is_yielded_once_intact_and_the_rest_reported(
    pieces: list[tuple[bytes, bytes]], tail: bytes, unfinished: bytes | None, cuts: list[int]
) -> None:
    stream = b"".join(junk + START_BLOCK + body + END_BLOCK + b"\r" for junk, body in pieces) + tail
    if unfinished is not None:
        stream += START_BLOCK + unfinished
    events, decoder = feed(stream, cuts)
    frames = [e for e in events if isinstance(e, Frame | Oversize)]
    expected = [Frame(body) if len(body) <= MAX else Oversize(body[:MAX], len(body)) for _, body in pieces]
    assert frames == expected
    assert junk_text(events) == b"".join(junk for junk, _ in pieces).translate(None, b" \t\r\n") + tail.translate(
        None, b" \t\r\n"
    )
    if unfinished is None:
        assert not decoder.in_frame
    else:
        assert decoder.in_frame
        pending = decoder.pending()
        # Kept for the rejected record: the unfinished frame, or the first bytes of one over the limit.
        assert (
            pending == START_BLOCK + unfinished if len(unfinished) <= MAX else pending == START_BLOCK + unfinished[:MAX]
        )


# --- the ER7 reader ------------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_the_documented_error(text: str) -> None:
    try:
        parsed = parse_message(text)
    except ValueError:
        return
    assert parsed.segments and parsed.segments[0].name == "MSH"


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_split_into_segments_and_message_logs(data: bytes) -> None:
    for span in segment_spans(data):
        assert 0 <= span.start < span.end <= span.stop <= len(data)
        assert data[span.start : span.end].strip()
    for message in split_message_log(data):
        assert message in data or message.strip(b"\r\n") in data


@FAST
@given(st.text(max_size=100), st.sampled_from(["|^~\\&", "#$%@!", "|^~\\&#"]))
def test_unescape_takes_any_text(value: str, encoding: str) -> None:
    seps = Separators(*encoding)
    assert isinstance(unescape(value, seps), str)


separator_sets = st.sampled_from(["|^~\\&", "#$%@!", "|^~\\&#", "*:;?!"])
segment_ids = st.from_regex(r"\A[A-Z][A-Z0-9]{2}\Z").filter(lambda s: s not in ("MSH", "BHS", "FHS"))
values = st.text(max_size=25)


@FAST
@given(
    separator_sets,
    st.lists(
        st.tuples(
            segment_ids,
            st.lists(st.lists(st.lists(values, min_size=1, max_size=3), min_size=1, max_size=3), max_size=6),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_a_message_built_from_random_values_reads_them_back(
    encoding: str, segments: list[tuple[str, list[list[list[str]]]]]
) -> None:
    """Each field is repetitions of components, each value escaped; reading unescapes them again."""
    fs, enc = encoding[0], encoding[1:]
    seps = Separators(fs, enc[0], enc[1], enc[2], enc[3], enc[4:5])
    lines = [f"MSH{fs}{enc}{fs}APP{fs}FAC{fs}HUB{fs}REN{fs}20260101{fs}{fs}ADT{seps.component}A01{fs}C1{fs}P{fs}2.5"]
    for name, fields in segments:
        rendered = [
            seps.repetition.join(seps.component.join(seps.escape_text(v) for v in rep) for rep in field)
            for field in fields
        ]
        lines.append(fs.join([name, *rendered]))
    parsed = parse_message("\r".join(lines) + "\r")
    assert [s.name for s in parsed.segments[1:]] == [name for name, _ in segments]
    for segment, (_, fields) in zip(parsed.segments[1:], segments, strict=True):
        for number, field in enumerate(fields, start=1):
            for index, rep in enumerate(field):
                if rep == [""] and len(field) == 1:
                    continue  # an empty field has no repetitions
                assert segment.components(number, index) == rep


# --- intake's header read and the limits ---------------------------------------------------------------


def answer(data: bytes) -> str:
    """What intake's lean read makes of ``data``: the ACK of the header read, or of the rejection."""
    try:
        read: HeaderRead = read_message(data, segment_spans(data), default_charset="utf-8", fallback_charset="cp1252")
    except Rejection as rejection:
        header: MessageHeader | None = first_header(data)
        return build_ack(
            header, rejection.ack, ack_control_id="X", issues=[], application="HUB", facility="REN", now=NOW
        )
    return build_ack(
        read.header, "AA", ack_control_id="X", issues=read.issues, application="HUB", facility="REN", now=NOW
    )


msh_like = st.builds(
    lambda head, rest: head + rest,
    st.sampled_from([b"MSH|^~\\&|", b"MSH|^~\\\\&|", b"\xef\xbb\xbfMSH|", b"MSH", b"MSH^~|\\&", b"BHS|^~\\&|", b""]),
    st.binary(max_size=300),
)


@FAST
@given(st.one_of(st.binary(max_size=300), msh_like))
def test_any_bytes_get_an_ack_or_a_rejection(data: bytes) -> None:
    ack = answer(data)
    assert ack.startswith("MSH") and "\rMSA" in ack


@FAST
@given(st.one_of(st.binary(max_size=400), msh_like), st.integers(min_value=1, max_value=20))
def test_the_limit_checks_take_any_bytes(data: bytes, limit: int) -> None:
    limits = Limits(segments=limit, field_repetitions=limit, bundle_entries=limit, contained_resources=limit)
    refusal = frame_refusal(data, limits)
    assert refusal is None or "MSCC_LIMIT_" in refusal.reason
    over = segments_over(data, limit)
    assert over is None or (over > limit and len(segment_spans(data)) > limit)
    if over is None:
        assert len(segment_spans(data)) <= limit
    check_fhir_bytes(data, limits)
