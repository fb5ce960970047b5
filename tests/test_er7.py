"""Lean ER7 parsing for the mapper: fields, repetitions, components, escape sequences."""

from __future__ import annotations

import pytest

from shared.er7 import DEFAULT_SEPARATORS, Separators, parse_message, unescape

# Microsoft FHIR-Converter's escape vectors use field A, component B, subcomponent C, repetition D.
LETTERS = Separators(field="A", component="B", repetition="D", escape="\\", subcomponent="C")


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("\\F\\n", "An"),
        ("\\S\\n", "Bn"),
        ("\\T\\n", "Cn"),
        ("\\R\\n", "Dn"),
        ("\\E\\n", "\\n"),
        ("\\.br\\n", "\nn"),
        ("\\X6566\\n", "efn"),
    ],
)
def test_escape_vectors_with_custom_separators(escaped: str, plain: str) -> None:
    assert unescape(escaped, LETTERS) == plain


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("\\E\\", "\\"),
        ("\\F\\", "|"),
        ("\\S\\", "^"),
        ("\\T\\", "&"),
        ("\\R\\", "~"),
        ("\\X20202020\\", "    "),
        ("\\Xe1\\\\Xe9\\", "áé"),
        ("no escapes", "no escapes"),
        ("\\H\\bold\\N\\", "bold"),
    ],
)
def test_escape_vectors_with_default_separators(escaped: str, plain: str) -> None:
    assert unescape(escaped, DEFAULT_SEPARATORS) == plain


def test_odd_hex_is_kept_literally() -> None:
    assert unescape("\\X656\\n", LETTERS) == "\\X656\\n"


def test_fields_repetitions_and_components() -> None:
    text = "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\rPID|1||123^^^NHS^NH~456^^^RBL^MR||SMITH^JO\\T\\CO\r"
    message = parse_message(text)
    msh, pid = message.first("MSH"), message.first("PID")
    assert msh is not None and pid is not None
    assert (msh.field(1), msh.field(2), msh.field(9), msh.value(9, 2)) == ("|", "^~\\&", "ADT^A01", "A01")
    assert pid.repetitions(3) == ["123^^^NHS^NH", "456^^^RBL^MR"]
    assert pid.components(3, 1) == ["456", "", "", "RBL", "MR"]
    assert pid.value(5, 2) == "JO&CO"
    assert pid.value(99) == "" and pid.repetitions(99) == []


def test_not_a_message() -> None:
    with pytest.raises(ValueError, match="MSH"):
        parse_message("PID|1\r")
