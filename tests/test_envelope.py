"""Batch and file envelopes: split into messages, or rejected as a whole with the reason."""

from __future__ import annotations

import pytest

from services.intake.envelope import split_envelope
from services.intake.header import Rejection
from shared.er7 import segment_spans

MSG = b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|{n}|P|2.5\rEVN|A04\rPID|1\r"


def msg(n: int) -> bytes:
    return MSG.replace(b"{n}", str(n).encode())


def split(data: bytes) -> list[bytes]:
    env = split_envelope(data, segment_spans(data))
    return [data[m[0].start : m[-1].stop] for m in env.messages]


def test_plain_message_is_an_envelope_of_one() -> None:
    assert split(msg(1)) == [msg(1)]


def test_file_with_batch_is_split_into_its_messages_byte_exact() -> None:
    data = b"FHS|^~\\&\rBHS|^~\\&\r" + msg(1) + msg(2) + b"BTS|2\rFTS|1\r"
    assert split(data) == [msg(1), msg(2)]


def test_missing_trailers_are_tolerated() -> None:
    assert split(b"BHS|^~\\&\r" + msg(1)) == [msg(1)]


def test_several_msh_without_batch_header_are_split() -> None:
    assert split(msg(1) + msg(2)) == [msg(1), msg(2)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"BHS|^~\\&\rEVN|A04\r" + msg(1), "before message header"),
        (b"BHS|^~\\&\r" + msg(1) + b"BHS|^~\\&\r" + msg(2), "more than one BHS"),
        (b"FHS|^~\\&\r" + msg(1) + b"FHS|^~\\&\r", "more than one FHS"),
    ],
)
def test_bad_envelopes_are_rejected_whole(data: bytes, reason: str) -> None:
    with pytest.raises(Rejection) as info:
        split(data)
    assert reason in info.value.reason
    assert info.value.code == 100
