"""The hub's own FHIR output pinned: every corpus HL7v2 message and FHIR input that maps, against its
golden file (a FHIR input mapped from the record intake builds for it: tests/golden_fhir.py).

A mapping change shows as a failure here, naming the golden file, with a summary (which message, which
resource) and a unified diff. If the change is intended: ``scripts/update-golden``, then review
``git diff tests/golden`` like code. What a golden file holds is described in tests/golden_update.py.
No database: the mapping is pure and reads no clock; a FHIR record's receive time is pinned.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from golden_fhir import fhir_corpus_entries
from golden_update import (
    HERE,
    UPDATE_COMMAND,
    Entry,
    corpus_entries,
    expected_files,
    golden_document,
    golden_path,
    present_files,
    render,
    shown,
    verdict,
)

ENTRIES = corpus_entries()


@functools.cache
def produced_files() -> dict[Path, str]:
    """Every golden file as today's mapping writes it (computed once per session: the tests only read it)."""
    return expected_files()


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["path"]) for e in ENTRIES])
def test_mapping_output_matches_golden_file(entry: Entry) -> None:
    # every corpus file: its messages that map give exactly the golden resources, patches, unmapped, issues
    problem = verdict(entry)
    if problem:
        pytest.fail(problem, pytrace=False)


def test_every_golden_file_belongs_to_a_corpus_message_that_maps() -> None:
    # a golden file left behind (corpus file renamed or removed) would pin nothing: it fails too
    wanted = set(produced_files())
    stale = [shown(path) for path in present_files() if path not in wanted]
    assert not stale, f"golden files with no corpus message that maps: {stale}; remove them with {UPDATE_COMMAND}"


def test_golden_files_cover_the_corpus() -> None:
    # the golden set is not empty and covers the message families the hub maps
    wanted = produced_files()
    assert len(wanted) >= 90, len(wanted)  # 97 corpus files with a message that maps when written
    types = {
        message["type"].split("^")[0]
        for text in wanted.values()
        for message in json.loads(text)["messages"]
        if "refused" not in message
    }
    assert {"ADT", "REF", "ORM", "ORU"} <= types, types


def test_golden_files_cover_the_fhir_corpus() -> None:
    # every FHIR input intake accepts maps: a create (with version 1) and each Bundle type posted
    wanted = produced_files()
    fhir = [golden_path(entry["path"]) for entry in fhir_corpus_entries()]
    assert not [shown(path) for path in fhir if path not in wanted]  # an accepted input that does not map
    messages = [json.loads(wanted[path])["messages"][0] for path in fhir]
    assert {m["type"] for m in messages} >= {"ServiceRequest create", "Bundle message", "Bundle batch"}
    assert all("created" in m for m in messages if m["type"] == "ServiceRequest create")


def test_golden_files_are_canonical_json() -> None:
    # hand edits that change only the layout are caught: a golden file is exactly its rendered content
    for path in present_files():
        text = path.read_text(encoding="utf-8")
        assert render(json.loads(text)) == text, shown(path)


def test_output_does_not_depend_on_hash_seed_or_time_zone() -> None:
    # determinism: another process with another hash seed (set order) and local time zone writes the same
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import golden_update as g\n"
        "for path, text in sorted(g.expected_files().items()):\n"
        "    sys.stdout.write(str(path) + '\\n' + text)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TZ": "Pacific/Auckland"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(HERE)], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    here = "".join(f"{path}\n{text}" for path, text in sorted(produced_files().items()))
    assert out == here


def test_fhir_create_golden_file_holds_version_1_and_what_it_implies() -> None:
    # the created ServiceRequest (normalised, with the id intake gives it) and the resources it implies
    entry = next(e for e in fhir_corpus_entries() if e["path"].endswith("/ServiceRequest-ambulation.json"))
    document = golden_document(entry)
    assert document is not None
    [message] = document["messages"]
    created = message["created"]
    assert created["resourceType"] == "ServiceRequest" and created["id"]
    assert not {"versionId", "lastUpdated", "source"} & set(created.get("meta", {}))
    references = json.dumps(message["resources"]) + json.dumps(message["patches"])
    assert f"ServiceRequest/{created['id']}" in references


def _entry_that_maps() -> Entry:
    return next(e for e in ENTRIES if e["path"].endswith("REF-I12-01.hl7"))


def test_missing_golden_file_fails_with_the_command_to_create_it(tmp_path: Path) -> None:
    # a message that maps without a golden file is a failure, not a silent pass
    problem = verdict(_entry_that_maps(), tmp_path)
    assert problem is not None
    assert "is missing" in problem and "REF-I12-01.hl7.json" in problem and "scripts/update-golden" in problem


def test_golden_file_of_a_message_that_no_longer_maps_fails(tmp_path: Path) -> None:
    # a corpus file whose messages are all refused now, but whose golden file says they mapped
    entry = next(e for e in ENTRIES if golden_document(e) is None)
    path = golden_path(entry["path"], tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(render({"corpus": entry["path"], "messages": []}), encoding="utf-8")
    problem = verdict(entry, tmp_path)
    assert problem is not None and "no message of" in problem and "maps any more" in problem


def test_changed_output_fails_with_a_diff_naming_the_file(tmp_path: Path) -> None:
    # one changed value (a birth date) in the golden file: the failure names file, message, resource, line
    entry = _entry_that_maps()
    golden = golden_path(entry["path"], tmp_path)
    golden.parent.mkdir(parents=True)
    document = golden_document(entry)
    assert document is not None
    patient = next(r for r in document["messages"][0]["resources"] if r["resourceType"] == "Patient")
    real = patient["birthDate"]
    golden.write_text(render(document).replace(f'"birthDate": "{real}"', '"birthDate": "1900-01-01"'), "utf-8")
    problem = verdict(entry, tmp_path)
    assert problem is not None
    assert str(golden) in problem and f"Patient/{patient['id']}" in problem
    assert '-          "birthDate": "1900-01-01",' in problem.splitlines()
    assert f'+          "birthDate": "{real}",' in problem.splitlines()
    golden.write_text(render(document), "utf-8")
    assert verdict(entry, tmp_path) is None
