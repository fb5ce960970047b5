"""Golden files of the hub's own FHIR output: what every corpus HL7v2 message and FHIR input that maps
turns into.

For each corpus file (tests/corpus/manifest.json) with at least one message that maps, the golden file
``tests/golden/<corpus path>.json`` holds, per message of the file (in order): its type and control id,
``source_time`` (MSH-7 as the mapping read it), the ``resources`` of the ``MappingResult`` of
``map_hl7v2`` with the default ``MappingConfig``, each patch with what it creates when nothing exists yet
(``apply(None)``: what a first message creates), the ``unmapped`` list and the ``issues``. A message of
the same file that does not map is listed with the issues it is refused with, so that a message that
stops mapping shows as a diff too. Fields the store stamps (``meta.versionId``, ``meta.lastUpdated``,
``meta.source``) are left out; the mapping reads no clock, so nothing else depends on the time of the run.

A FHIR corpus input intake accepts (tests/corpus/fhir_manifest.json: a ServiceRequest created through
``POST /fhir/ServiceRequest``, a transaction, batch or message Bundle posted to ``POST /fhir``) is one
message: the record intake builds for it without a database (``golden_fhir``: intake's own pure
functions, the development client as caller, the receive time and random ids pinned) mapped by the
mapper's dispatch (``make_mapper``). Its ``type`` is the endpoint and interaction (``ServiceRequest
create``, ``Bundle message``), its ``control_id`` the body's own id; it also holds ``intake_issues``
(the warnings intake kept on the record) and, for a create, ``created``: the normalised resource intake
writes as version 1. A patch that reads other resources (``apply_with``) is applied with none of them.

The files are pretty JSON (sorted keys, 2-space indent, trailing newline), reviewed like code. Which
messages are taken is the corpus test's rule (``corpus_messages`` in tests/test_hl7_mapping.py: the
messages intake accepts). ``tests/test_golden_own.py`` compares; this module rewrites them:

    python -m tests.golden_update          # or scripts/update-golden; then review: git diff tests/golden
    python -m tests.golden_update --check  # exit status 1 when a golden file is missing, stale or differs

Golden files of corpus files that no longer map are removed by the update (a deletion in the diff).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as ``python -m tests.golden_update``: the corpus rule lives beside it
    sys.path.insert(0, str(HERE))

from golden_fhir import fhir_corpus_entries, intake  # noqa: E402
from test_hl7_mapping import MANIFEST, corpus_messages  # noqa: E402

from services.mapper.dispatch import make_mapper  # noqa: E402
from services.mapper.hl7 import map_hl7v2  # noqa: E402
from services.mapper.model import MappingError, MappingResult, Patch, Resource  # noqa: E402
from shared.er7 import parse_message  # noqa: E402
from shared.fhir import FhirError  # noqa: E402

GOLDEN = HERE / "golden"
UPDATE_COMMAND = "scripts/update-golden  (or: python -m tests.golden_update), then review: git diff tests/golden"
# Stamped when a version is written, never by the mapping: they would differ from run to run.
VOLATILE_META = ("versionId", "lastUpdated", "source")
MAX_DIFF_LINES = 400
MAPPER = make_mapper()  # the worker's dispatch: a FHIR record maps by its interaction

Entry = dict[str, Any]
Document = dict[str, Any]


def corpus_entries() -> list[Entry]:
    """Every manifest entry holding HL7v2 messages (the corpus test's selection), then every FHIR corpus
    input intake is expected to accept (tests/corpus/fhir_manifest.json: ``golden_fhir``)."""
    return [entry for entry in MANIFEST if entry["kind"] != "not_message"] + fhir_corpus_entries()


def golden_path(corpus_path: str, root: Path = GOLDEN) -> Path:
    """Where the golden file of a corpus file lives: the corpus layout, ``.json`` appended to the name
    (``hapi-hl7v2/hl7v2/X.hl7`` -> ``tests/golden/hapi-hl7v2/hl7v2/X.hl7.json``)."""
    return root / f"{corpus_path}.json"


def strip_volatile(resource: Resource) -> Resource:
    """The resource without the fields the store stamps (in it and in its contained resources)."""
    out = dict(resource)
    meta = {k: v for k, v in (out.get("meta") or {}).items() if k not in VOLATILE_META}
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    if "contained" in out:
        out["contained"] = [strip_volatile(item) for item in out["contained"]]
    return out


def _header(text: str) -> dict[str, str]:
    """The message type (MSH-9, ``REF^I12``) and control id (MSH-10): where to find the message."""
    try:
        msh = parse_message(text).segments[0]
    except (ValueError, IndexError):
        return {"type": "", "control_id": ""}
    return {"type": "^".join(msh.components(9)[:2]), "control_id": msh.field(10)}


def creates(patch: Patch) -> Resource:
    """What a patch creates when nothing exists yet; one that reads other resources (``apply_with``) is
    given none of them (an empty context: none of them is stored yet either)."""
    return patch.apply(None) if patch.apply_with is None else patch.apply_with(None, {})


def _mapped(result: MappingResult) -> Document:
    return {
        "source_time": result.source_time.isoformat() if result.source_time else None,
        "resources": [strip_volatile(resource) for resource in result.resources],
        "patches": [
            {
                "target": f"{patch.resource_type}/{patch.resource_id}",
                "reason": patch.reason,
                "ordered": patch.ordered,
                "creates": strip_volatile(creates(patch)),
            }
            for patch in result.patches
        ],
        "unmapped": list(result.unmapped),
        "issues": list(result.issues),
    }


def _fhir_message(entry: Entry) -> Document:
    """A FHIR corpus input as one message: the record intake builds for it mapped by the mapper's
    dispatch (as the worker maps it), with what intake kept (its warnings; for a create, version 1)."""
    data = json.loads((HERE / "corpus" / entry["path"]).read_bytes())
    described: Document = {"position": 0, "type": f"{entry['endpoint']} {data.get('type') or 'create'}"}
    described["control_id"] = str(data.get("id") or "")
    try:
        taken = intake(entry)
    except FhirError as exc:  # intake refuses it: listed as refused, so it is not golden
        return {**described, "refused": exc.issues}
    described["intake_issues"] = list(taken.record["issues"])
    if taken.created is not None:
        described["created"] = strip_volatile(taken.created)
    try:
        described.update(_mapped(MAPPER(taken.record)))
    except MappingError as exc:
        described["refused"] = exc.issues
    return described


def golden_document(entry: Entry) -> Document | None:
    """What the golden file of a corpus file holds, or None when no message of the file maps."""
    if "endpoint" in entry:  # a FHIR corpus input: one message, the record intake builds for it
        fhir = _fhir_message(entry)
        return None if "refused" in fhir else {"corpus": entry["path"], "messages": [fhir]}
    messages: list[Document] = []
    for position, text in enumerate(corpus_messages(entry)):
        described: Document = {"position": position, **_header(text)}
        try:
            described.update(_mapped(map_hl7v2(text)))
        except MappingError as exc:
            described["refused"] = exc.issues
        messages.append(described)
    if not any("refused" not in message for message in messages):
        return None
    return {"corpus": entry["path"], "messages": messages}


def render(document: Document) -> str:
    """Stable pretty JSON: sorted keys, 2-space indent, UTF-8 as is, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[Path, str]:
    """Every golden file the corpus produces today, with its text."""
    out: dict[Path, str] = {}
    for entry in corpus_entries():
        document = golden_document(entry)
        if document is not None:
            out[golden_path(entry["path"])] = render(document)
    return out


def present_files(root: Path = GOLDEN) -> list[Path]:
    """The golden files in the tree (``tests/golden/**/*.json``)."""
    return sorted(root.rglob("*.json"))


def shown(path: Path) -> str:
    """A path as the repository names it (``tests/golden/...``) when it is in the repository."""
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


def _summary(golden: Document, produced: Document) -> list[str]:
    """Which parts changed, per message: resources by Type/id, patches, unmapped, issues, refusal."""
    lines: list[str] = []
    old_messages, new_messages = golden.get("messages", []), produced.get("messages", [])
    if len(old_messages) != len(new_messages):
        lines.append(f"  {len(old_messages)} message(s) golden, {len(new_messages)} now")
    for old, new in zip(old_messages, new_messages, strict=False):
        where = f"  message {new.get('position')} ({new.get('type')}, control id {new.get('control_id')!r})"
        if ("refused" in old) != ("refused" in new):
            lines.append(f"{where}: {'no longer maps' if 'refused' in new else 'maps now'}")
            continue
        olds = {f"{r['resourceType']}/{r.get('id')}": r for r in old.get("resources", [])}
        news = {f"{r['resourceType']}/{r.get('id')}": r for r in new.get("resources", [])}
        changed = [f"+{key}" for key in news if key not in olds] + [f"-{key}" for key in olds if key not in news]
        changed += [key for key in news if key in olds and olds[key] != news[key]]
        parts = ("created", "patches", "unmapped", "issues", "intake_issues", "refused")
        changed += [part for part in parts if old.get(part) != new.get(part)]
        if changed:
            lines.append(f"{where}: {', '.join(changed)}")
    return lines


def difference(path: Path, golden_text: str, produced_text: str) -> str:
    """A readable account of how today's output differs from the golden file: a summary, then a unified
    diff (cut after ``MAX_DIFF_LINES`` lines)."""
    try:
        summary = _summary(json.loads(golden_text), json.loads(produced_text))
    except (ValueError, KeyError, TypeError, AttributeError):
        summary = ["  (the golden file is not the expected JSON document)"]
    diff = list(
        difflib.unified_diff(
            golden_text.splitlines(),
            produced_text.splitlines(),
            fromfile=f"{shown(path)} (golden)",
            tofile="mapping output now",
            lineterm="",
        )
    )
    if len(diff) > MAX_DIFF_LINES:
        diff = [*diff[:MAX_DIFF_LINES], f"... {len(diff) - MAX_DIFF_LINES} more diff lines"]
    return "\n".join(
        [
            f"{shown(path)}: the mapping output differs from the golden file",
            *summary,
            f"If the change is intended, run {UPDATE_COMMAND}",
            *diff,
        ]
    )


def verdict(entry: Entry, root: Path = GOLDEN) -> str | None:
    """Why the corpus file's output and its golden file disagree (None when they agree): its messages
    differ from the golden file, a message maps and there is no golden file, or a golden file remains
    while no message maps any more. Each account names the golden file and the update command."""
    document = golden_document(entry)
    path = golden_path(entry["path"], root)
    if document is None:
        if path.exists():
            return (
                f"{shown(path)}: no message of {entry['path']} maps any more (each is refused), but its "
                f"golden file says they did. If that is intended, run {UPDATE_COMMAND}"
            )
        return None
    if not path.exists():
        return f"{shown(path)} is missing: a message of {entry['path']} maps. Create it with {UPDATE_COMMAND}"
    golden, produced = path.read_text(encoding="utf-8"), render(document)
    return difference(path, golden, produced) if golden != produced else None


def update(check: bool = False) -> int:
    """Write every golden file that is missing or differs and remove those of corpus files that no
    longer map (with ``check``: only report them). Returns how many files were (or would be) changed."""
    wanted = expected_files()
    changes = 0
    for path, text in sorted(wanted.items()):
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        changes += 1
        print(f"{'differs' if current is not None else 'missing'}: {shown(path)}")
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in present_files():
        if path not in wanted:
            changes += 1
            print(f"stale (no message of its corpus file maps): {shown(path)}")
            if not check:
                path.unlink()
    print(f"{len(wanted)} golden files; {changes} {'to change' if check else 'changed'}")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite the golden files of the hub's own FHIR output.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file would change")
    args = parser.parse_args(argv)
    changes = update(check=args.check)
    return 1 if args.check and changes else 0


if __name__ == "__main__":
    sys.exit(main())
