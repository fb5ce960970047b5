"""The lean read intake does before acknowledging: separators, versions, charsets, segment ids."""

from __future__ import annotations

import pytest

from services.intake.header import Rejection, read_message
from shared.er7 import segment_spans, split_message_log


def read(data: bytes):  # type: ignore[no-untyped-def]
    return read_message(data, segment_spans(data), default_charset="utf-8", fallback_charset="cp1252")


def rejected(data: bytes) -> Rejection:
    with pytest.raises(Rejection) as info:
        read(data)
    return info.value


BASE = b"MSH|^~\\&|SEND|FAC|HUB|REN|20260101120000||ADT^A01^ADT_A01|CTRL1|P|2.5\rPID|1||123\r"


def test_reads_the_header_fields() -> None:
    header = read(BASE).header
    assert (header.sending_application, header.sending_facility) == ("SEND", "FAC")
    assert (header.message_type, header.control_id, header.version) == ("ADT^A01", "CTRL1", "2.5")
    assert not header.enhanced_mode


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", 100),
        (b"PID|1||123\r", 100),
        (b"MSQ|||\r", 100),
        (b"MSH|\r", 102),
        (b"MSH|^~\\|A\r", 102),
        (b"MSH|^~^#|A\r", 102),
        (b"MSHMSH|^~\\&|A\r", 102),
        (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.999\r", 203),
        (BASE + b"String|not a segment\r", 100),
        (BASE + b"I|1\r", 100),
    ],
)
def test_rejections_carry_table_0357_codes(data: bytes, code: int) -> None:
    assert rejected(data).code == code


def test_missing_cr_after_msh_is_caught_by_the_field_count() -> None:
    glued = b"MSH|^~\\&|ADT|EPIC|J|CC|2016||ADT^A08|1|D|2.3^^|||||||EVN|A08|2015||R|X||"
    assert "CR ending MSH" in rejected(glued).reason


def test_v251_may_carry_the_v27_header_fields() -> None:
    data = b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5.1|||AL|NE||||||PROFILE|ORG|NET|NET2\rPID|1\r"
    assert read(data).header.version == "2.5.1"


def test_crlf_and_lf_separators_and_blank_lines_are_accepted() -> None:
    for sep in (b"\n", b"\r\n", b"\r\r"):
        read(BASE.replace(b"\r", sep))


def test_line_feed_inside_a_field_is_text_when_no_segment_follows() -> None:
    data = BASE + b"OBX|1|TX|||first line\nsecond line\rNTE|1\r"
    spans = segment_spans(data)
    assert [data[s.start : s.start + 3] for s in spans] == [b"MSH", b"PID", b"OBX", b"NTE"]


def test_utf8_bom_and_charset_fallback_are_reported_not_silent() -> None:
    assert read(b"\xef\xbb\xbf" + BASE).charset == "utf-8"
    result = read(BASE.replace(b"FAC", b"FAC\x96X"))  # cp1252 en dash: not UTF-8
    assert result.charset == "cp1252"
    assert "FAC\u2013X" in result.text
    assert any("decoded as cp1252" in issue.text for issue in result.issues)


def test_msh18_names_the_charset() -> None:
    data = b"MSH|^~\\&|A|\xe9|C|D|2026||ADT^A01|1|P|2.5||||||8859/1\rPID|1\r"
    result = read(data)
    assert result.charset == "latin-1"
    assert "|\u00e9|" in result.text


def test_empty_type_control_id_and_version_are_accepted_with_warnings() -> None:
    result = read(b"MSH|^~\\&|\rOBX||ST|||Blood&Plasma\r")
    texts = " ".join(issue.text for issue in result.issues)
    assert "MSH-9" in texts and "MSH-10" in texts and "MSH-12" in texts


def test_doubled_escape_character_is_read_as_one_with_a_warning() -> None:
    result = read(BASE.replace(b"^~\\&", b"^~\\\\&"))
    assert result.header.separators.escape == "\\"
    assert result.header.separators.subcomponent == "&"
    assert any("doubled" in issue.text for issue in result.issues)


def test_non_default_separators() -> None:
    data = b"MSH^~|\\&^VISTA^050^HUB^REN^2026^^ORU~R01^9^P^2.4\rPID^1\r"
    header = read(data).header
    assert header.separators.field == "^"
    assert header.message_type == "ORU^R01"


def test_message_log_split_drops_comments_and_blank_lines() -> None:
    log = b"// first\n" + BASE.replace(b"\r", b"\n") + b"\n/* a\ncomment */\n\n" + BASE.replace(b"\r", b"\n")
    parts = split_message_log(log)
    assert len(parts) == 2
    assert all(part.startswith(b"MSH|") for part in parts)
