"""The quick validation of hub-built resources (shared/built_validation.py) against full validation.

Two promises: every resource the hub builds from the corpus (the golden files: every HL7v2 mapping,
every patch's result, what FHIR inputs imply) passes full validation and the quick check alike, so the
mapper takes the quick path; and the quick check never passes anything full validation refuses. The
second is checked on every distinct element of the golden output, each made invalid in turn (bad
primitive values, wrong shapes, nulls, empty objects and arrays, unknown keys, removed elements).
No database.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.built_validation import conforms, validate_built
from shared.fhir import FhirError, validate
from shared.resources import stamp
from shared.versions import next_version

GOLDEN = Path(__file__).resolve().parent / "golden"
NOW = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
SOURCE = "urn:uuid:12b8c113-1047-4d4a-a702-210f7545122f"


def _stamped(resource: dict[str, Any]) -> dict[str, Any]:
    return stamp(resource, resource["id"], 3, NOW, SOURCE)


def golden_outputs() -> Iterator[tuple[str, bool, dict[str, Any]]]:
    """(golden file, built by the hub, resource as stored) for every resource and patch result."""
    for path in sorted(GOLDEN.rglob("*.json")):
        for message in json.loads(path.read_text())["messages"]:
            fhir = "created" in message or "intake_issues" in message
            name = path.relative_to(GOLDEN).as_posix()
            for resource in message.get("resources", []):
                # A FHIR input's own resources are received content; what it implies is built.
                yield name, not fhir, _stamped(resource)
            for patch in message.get("patches", []):
                yield name, True, _stamped(patch["creates"])


OUTPUTS = list(golden_outputs())


def test_every_golden_output_passes_full_validation_and_hub_built_ones_the_quick_check() -> None:
    assert len(OUTPUTS) >= 400, len(OUTPUTS)
    refused, unsure = [], []
    for name, built, resource in OUTPUTS:
        try:
            validate(resource)
        except FhirError as exc:
            refused.append((name, resource["resourceType"], exc.issues[:2]))
        if built and not conforms(resource):
            unsure.append((name, resource["resourceType"]))
    assert not refused, refused
    assert not unsure, unsure  # the quick check reads everything the hub builds: no fall-back needed
    types = {resource["resourceType"] for _, built, resource in OUTPUTS if built}
    assert {"Patient", "Encounter", "ServiceRequest", "CarePlan", "Task", "Condition"} <= types, types


BAD_PRIMITIVES: list[Any] = ["", " ", "a  b", "x y", " lead", "2020-13-45T25:00", "\u0000", 12, 1.5, True, None]


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _nodes(child, (*path, index))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _shape(resource: dict[str, Any], path: tuple[Any, ...]) -> str:
    """The element a path names, array positions left out: one mutation set per distinct element."""
    return f"{resource['resourceType']}." + ".".join(str(p) for p in path if not isinstance(p, int))


def _replaced(resource: dict[str, Any], path: tuple[Any, ...], new: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    _at(out, path[:-1])[path[-1]] = new
    return out


def mutations(resource: dict[str, Any], path: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    """``resource`` with the node at ``path`` made wrong in every way that applies to it."""
    node = _at(resource, path)
    if path:
        for bad in [None, {}, [], "text", [node], {"value": node}]:
            yield _replaced(resource, path, bad)
        if isinstance(path[-1], str):
            out = copy.deepcopy(resource)
            del _at(out, path[:-1])[path[-1]]
            yield out
    if isinstance(node, dict):
        yield _replaced(resource, path, {**node, "bogus": 1}) if path else {**resource, "bogus": 1}
    elif isinstance(node, list) and path:
        yield _replaced(resource, path, node[0])
        yield _replaced(resource, path, [*node, None])
    elif path:
        for bad in BAD_PRIMITIVES:
            yield _replaced(resource, path, bad)


def test_the_quick_check_never_passes_what_full_validation_refuses() -> None:
    seen: set[str] = set()
    checked = refused = 0
    unsound = []
    for _, _, resource in OUTPUTS:
        for path in _nodes(resource):
            shape = _shape(resource, path)
            if shape in seen:
                continue
            seen.add(shape)
            for mutated in mutations(resource, path):
                checked += 1
                try:
                    validate(mutated)
                except FhirError:
                    refused += 1
                    if conforms(mutated):
                        unsound.append(shape)
    assert not unsound, sorted(set(unsound))[:20]
    # The check has teeth: thousands of variants, most of them invalid, over hundreds of elements.
    assert len(seen) >= 300 and checked >= 3000 and refused >= checked // 2, (len(seen), checked, refused)


def test_a_choice_element_with_two_types_is_left_to_full_validation() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "motor power"},
        "valueString": "reduced",
    }
    assert conforms(observation)
    doubled = {**observation, "valueBoolean": True}
    assert not conforms(doubled)
    with pytest.raises(FhirError):
        validate(doubled)


def test_an_invalid_built_resource_gets_the_full_validators_answer() -> None:
    # A sender's code with a doubled space is no FHIR code: the message fails, naming the element.
    task = {
        "resourceType": "Task",
        "id": "t1",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": "urn:mscc:code:x", "code": "a  b"}]},
    }
    with pytest.raises(FhirError) as quick:
        validate_built(task)
    with pytest.raises(FhirError) as full:
        validate(task)
    assert quick.value.issues == full.value.issues
    assert quick.value.issues[0]["expression"] == ["Task.code.coding[0].code"]
    fixed = {**task, "code": {"coding": [{"system": "urn:mscc:code:x", "code": "a b"}]}}
    assert validate_built(fixed) is fixed


def test_the_write_path_refuses_invalid_content_whether_built_or_received() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "femalee", "birthDate": "1950-02-30"}
    for built in (True, False):
        with pytest.raises(FhirError) as raised:
            next_version(None, patient, now=NOW, source=SOURCE, message_id=None, built=built)
        assert raised.value.status == 400
    valid = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-02-28"}
    new = next_version(None, valid, now=NOW, source=SOURCE, message_id=None, built=True)
    assert new is not None and new.current.resource["meta"]["versionId"] == "1"
