"""MLLP framing, byte by byte, without sockets."""

from __future__ import annotations

from shared.mllp import Frame as F
from shared.mllp import FrameDecoder, Junk, Oversize, frame

MSG = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1\r"


def feed_all(decoder: FrameDecoder, *chunks: bytes) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_one_frame() -> None:
    assert feed_all(FrameDecoder(1024), frame(MSG)) == [F(MSG)]


def test_frame_split_byte_by_byte_is_reassembled() -> None:
    data = frame(MSG)
    decoder = FrameDecoder(1024)
    events = feed_all(decoder, *(data[i : i + 1] for i in range(len(data))))
    assert events == [F(MSG)]
    assert not decoder.in_frame


def test_frame_split_between_end_block_and_carriage_return() -> None:
    data = frame(MSG)
    decoder = FrameDecoder(1024)
    assert decoder.feed(data[:-1]) == []
    assert decoder.in_frame
    assert decoder.feed(data[-1:]) == [F(MSG)]


def test_two_frames_in_one_chunk_come_out_in_order() -> None:
    second = MSG.replace(b"|1|P", b"|2|P")
    assert feed_all(FrameDecoder(1024), frame(MSG) + frame(second)) == [F(MSG), F(second)]


def test_whitespace_between_frames_is_ignored_but_other_bytes_are_reported() -> None:
    events = feed_all(FrameDecoder(1024), b"\r\n" + frame(MSG) + b"garbage\r" + frame(MSG))
    assert events == [F(MSG), Junk(b"garbage\r", "bytes outside an MLLP frame (no start block 0x0B)"), F(MSG)]


def test_end_block_followed_by_start_block_ends_the_frame_without_carriage_return() -> None:
    events = feed_all(FrameDecoder(1024), b"\x0b" + MSG + b"\x1c" + frame(MSG))
    assert events == [F(MSG), F(MSG)]


def test_end_block_inside_the_data_is_data() -> None:
    payload = MSG + b"NTE|1||a\x1cb\r"
    assert feed_all(FrameDecoder(1024), frame(payload)) == [F(payload)]


def test_new_start_block_inside_a_frame_reports_the_unfinished_part() -> None:
    events = feed_all(FrameDecoder(1024), b"\x0bMSH|partial" + frame(MSG))
    assert len(events) == 2
    assert isinstance(events[0], Junk)
    assert events[0].data == b"\x0bMSH|partial"
    assert events[1] == F(MSG)


def test_unfinished_frame_is_pending() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"\x0b" + MSG) == []
    assert decoder.in_frame
    assert decoder.pending() == b"\x0b" + MSG


def test_oversize_frame_in_one_chunk_keeps_its_head() -> None:
    big = MSG + b"NTE|1||" + b"x" * 5000 + b"\r"
    events = feed_all(FrameDecoder(1024), frame(big) + frame(MSG))
    assert events == [Oversize(big[:1024], len(big)), F(MSG)]


def test_oversize_frame_over_many_chunks_is_discarded_to_its_end() -> None:
    big = MSG + b"NTE|1||" + b"y" * 50_000 + b"\r"
    data = frame(big) + frame(MSG)
    decoder = FrameDecoder(2048)
    events = feed_all(decoder, *(data[i : i + 700] for i in range(0, len(data), 700)))
    assert events == [Oversize(big[:2048], len(big)), F(MSG)]
    assert not decoder.in_frame
