"""ACK content: addressing, MSA, ERR by version, enhanced-mode commit codes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from services.intake.ack import ack_code, build_ack, should_reply
from services.intake.header import Issue, MessageHeader, read_header_fields

CORPUS = Path(__file__).parent / "corpus"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def header(msh: str) -> MessageHeader:
    return read_header_fields(msh)


def fields(segment: str) -> list[str]:
    return segment.split("|")


def test_ack_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    h = header("MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20260101||ADT^A01^ADT_A01|MSG00001|P|2.5")
    msh, msa = (
        build_ack(h, "AA", ack_control_id="ACK1", issues=[], application="HUB", facility="REN", now=NOW)
        .rstrip("\r")
        .split("\r")
    )
    f = fields(msh)
    assert f[2:6] == ["RECVAPP", "RECVFAC", "SENDAPP", "SENDFAC"]
    assert f[6] == "20261125093000+0000"
    assert f[8] == "ACK^A01^ACK"
    assert (f[9], f[10], f[11]) == ("ACK1", "P", "2.5")
    assert msa == "MSA|AA|MSG00001"


def test_camel_expected_ack_fields_match_for_its_test_message() -> None:
    """The Camel auto-ACK for its ADT^A04: addresses swapped (with components), version copied.

    One deliberate difference: where the sender left its receiving facility (MSH-6) empty, our ACK
    names this hub's facility as the responder instead of leaving MSH-4 empty.
    """
    sent = (CORPUS / "apache-camel-mllp/hl7v2/ADT_A04__AckTestSupport__TEST_MESSAGE.hl7").read_bytes().decode()
    expected = (
        (CORPUS / "apache-camel-mllp/hl7v2/ACK_A04__AckTestSupport__EXPECTED_ACKNOWLEDGEMENT.hl7").read_bytes().decode()
    )
    ours = build_ack(
        header(sent.split("\r")[0]), "AA", ack_control_id="X", issues=[], application="HUB", facility="REN", now=NOW
    )
    ours_msh, theirs_msh = fields(ours.split("\r")[0]), fields(expected.split("\r")[0])
    assert ours_msh[2] == theirs_msh[2]
    assert (theirs_msh[3], ours_msh[3]) == ("", "REN")
    assert ours_msh[4:6] == theirs_msh[4:6]
    assert ours_msh[8] == theirs_msh[8]
    assert ours_msh[11] == theirs_msh[11]
    assert ours.split("\r")[1] == expected.split("\r")[1]


def test_err_segment_v25_and_v23_shapes() -> None:
    issue = Issue("E", 203, "MSH-12 version '2.999' is not known", "MSH-12")
    v25 = build_ack(
        header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5"),
        "AR",
        ack_control_id="1",
        issues=[issue],
        application="H",
        facility="R",
        now=NOW,
    ).split("\r")
    err = fields(v25[2])
    assert err[0] == "ERR" and err[2] == "MSH^1^12" and err[3] == "203^Unsupported version id^HL70357"
    assert err[4] == "E" and "not known" in err[8]
    assert v25[1].startswith("MSA|AR|9|")
    v23 = build_ack(
        header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.3"),
        "AR",
        ack_control_id="1",
        issues=[issue],
        application="H",
        facility="R",
        now=NOW,
    ).split("\r")
    assert v23[2].startswith("ERR|MSH^1^12^203&")


def test_err_text_is_escaped_in_the_senders_separators() -> None:
    issue = Issue("E", 100, "bad | field ^ here", "")
    ack = build_ack(
        header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5"),
        "AR",
        ack_control_id="1",
        issues=[issue],
        application="H",
        facility="R",
        now=NOW,
    )
    assert "bad \\F\\ field \\S\\ here" in ack


def test_no_header_gives_a_minimal_nack_from_the_hub() -> None:
    ack = build_ack(
        None, "AR", ack_control_id="1", issues=[Issue("E", 100, "no MSH")], application="HUB", facility="REN", now=NOW
    )
    assert ack.startswith("MSH|^~\\&|HUB|REN|")
    assert "\rMSA|AR||no MSH\r" in ack


def test_enhanced_mode_uses_commit_codes_and_msh15() -> None:
    always = header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5|||AL|NE")
    never = header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5|||NE|AL")
    errors = header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5|||ER|AL")
    original = header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5")
    assert ack_code("AA", always) == "CA" and ack_code("AR", always) == "CR"
    assert ack_code("AA", original) == "AA"
    assert should_reply("CA", always) and not should_reply("CA", never)
    assert not should_reply("CA", errors) and should_reply("CR", errors)
    assert should_reply("AA", original)


def test_a_version_int_cannot_read_is_still_answered() -> None:
    """MSH-12 "²" is a digit to ``str.isdigit`` but no number to ``int()``: the refusal is answered."""
    issue = Issue("E", 203, "MSH-12 version '²' is not an HL7 v2 version", "MSH-12")
    ack = build_ack(
        header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|²"),
        "AR",
        ack_control_id="1",
        issues=[issue],
        application="H",
        facility="R",
        now=NOW,
    )
    msh, msa, err = ack.rstrip("\r").split("\r")
    assert fields(msh)[11] == "²"
    assert msa == "MSA|AR|9|MSH-12 version '²' is not an HL7 v2 version"
    assert err.startswith("ERR|MSH^1^12^203")


def test_acks_to_one_sender_differ_only_in_time_ids_and_issues() -> None:
    """The parts of an ACK kept per sender never leak between senders, times or control ids."""
    first = header("MSH|^~\\&|A|B|C|D|2026||ADT^A01|9|P|2.5")
    again = header("MSH|^~\\&|A|B|C|D|2027||ADT^A01|11|P|2.5")  # the same sender's next message
    other = header("MSH#$%*@#X#Y#Z#W#2026##ORU$R01#10#T#2.3")
    later = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    warning = [Issue("W", 102, "PID-3 fails | the check", "PID-3")]
    acks = [
        build_ack(h, code, ack_control_id=ack_id, issues=issues, application="H", facility="R", now=now)
        for h, code, ack_id, issues, now in [
            (first, "AA", "1", [], NOW),
            (other, "AA", "2", warning, later),
            (again, "CA", "3", warning, later),
        ]
    ]
    assert acks == [
        "MSH|^~\\&|C|D|A|B|20261125093000+0000||ACK^A01^ACK|1|P|2.5\rMSA|AA|9\r",
        "MSH#$%*@#Z#W#X#Y#20270102030405+0000##ACK$R01$ACK#2#T#2.3\rMSA#AA#10\r"
        "ERR#PID$1$3$102@PID-3 fails | the check@HL70357\r",
        "MSH|^~\\&|C|D|A|B|20270102030405+0000||ACK^A01^ACK|3|P|2.5\rMSA|CA|11\r"
        "ERR||PID^1^3|102^Data type error^HL70357|W||||PID-3 fails \\F\\ the check\r",
    ]
