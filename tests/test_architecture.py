"""The package rules: which part of the hub may import which, read from the source (``ast``; nothing is
imported, no database, no sockets).

    shared/             imports no package of services/
    services/pathway/   the MSCC domain: imports shared/ only
    services/mapper/    imports shared/ and services/pathway/
    services/notifier/  imports shared/ only
    services/intake/    the inbound flows: imports shared/ only
    services/api/       the HTTP application: imports shared/, intake, pathway and the notifier
    services/*.py       the processes' entry points (cli, runner, the command modules): may import any part
    services/demo/      the demo: a client of the running hub, imports shared/ only

Only services/runner.py and services/cli.py import services/api/. The worker processes (mapper,
notifier) never load an HTTP server package, and intake never loads another room (the pathway, the
mapper, the notifier, the API), not even through what they import. A package added under services/
needs its line in ``MAY_IMPORT``. A failure names the module, the line and the import, and the rule it
breaks: move the code to the room it belongs in rather than widen the rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("shared", "services")

# Package -> the packages of this repository it may import (besides itself). Every package may import
# the standard library and third-party packages (the HTTP rule below aside).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "shared": frozenset(),
    "services.pathway": frozenset({"shared"}),
    "services.mapper": frozenset({"shared", "services.pathway"}),
    "services.notifier": frozenset({"shared"}),
    "services.intake": frozenset({"shared"}),
    # The API composes the routers of the parts it serves (the pathway's and the notifier's routers are
    # its own modules, calling those packages' functions, so they stay free of HTTP frameworks).
    "services.api": frozenset({"shared", "services.intake", "services.pathway", "services.notifier", "services.ui"}),
    # The operator dashboard, composed by the API: it reads through shared/ and the pathway, reprocesses
    # through intake and resumes dead-lettered notifications through the notifier, as the CLI and API do.
    "services.ui": frozenset({"shared", "services.intake", "services.pathway", "services.notifier"}),
    # The replay tool is a client of the hub; its dry run reads and maps locally with intake's lean read
    # and pure record builders and the mapper's dispatch (no I/O of theirs).
    "services.replay": frozenset({"shared", "services.intake", "services.mapper"}),
    # The demo drives the hub from outside, as the trusts do (MLLP and the HTTP API), with the client
    # registry and the message records read through shared/.
    "services.demo": frozenset({"shared"}),
}
# Single edges allowed across the rules above: (importing package, imported module) -> why. Empty: an
# edge added here is a room's code living in another room, to be moved soon.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}
WORKERS = ("services.mapper", "services.notifier")
# Intake answers before anything is mapped: the process that accepts messages loads no other room.
INTAKE = "services.intake"
NOT_FROM_INTAKE = ("services.mapper", "services.pathway", "services.notifier", "services.api")
# Only the entry points (and the tests) import the API.
API = "services.api"
API_IMPORTERS = frozenset({"services.runner", "services.cli"})
HTTP_SERVERS = frozenset({"fastapi", "uvicorn", "starlette"})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: str  # its file, relative to the repository
    line: int
    target: str  # the imported module, absolute

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.target}"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module under ``TOP``: dotted name -> file (a package is its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for top in TOP:
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, source: str, known: Iterable[str], root: Path = ROOT) -> Iterator[Import]:
    """Every import in ``source`` (the module ``module`` at ``path``), anywhere in it (inside functions
    and ``TYPE_CHECKING`` blocks too), as absolute module names. ``from package import name`` yields
    ``package.name`` too when that is a module of ours (``from . import tables``)."""
    names = set(known)
    rel = path.relative_to(root).as_posix() if path.is_absolute() else path.as_posix()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            yield Import(module, rel, node.lineno, target)
            for alias in node.names:
                if f"{target}.{alias.name}" in names:
                    yield Import(module, rel, node.lineno, f"{target}.{alias.name}")


def all_imports(root: Path = ROOT) -> list[Import]:
    files = module_files(root)
    out: list[Import] = []
    for module, path in files.items():
        out += imports_of(module, path, path.read_text(encoding="utf-8"), files, root)
    return out


def package_of(module: str, subpackages: Iterable[str]) -> str:
    """The rule's package of a module: ``shared``, ``services.<part>`` (one of ``subpackages``), or
    ``services`` for the entry points directly under services/ (and services/ itself)."""
    parts = module.split(".")
    if parts[0] == "shared":
        return "shared"
    package = ".".join(parts[:2])
    return package if package in set(subpackages) else "services"


def rule_breaks(found: Iterable[Import], subpackages: Iterable[str]) -> list[str]:
    """What breaks ``MAY_IMPORT``: one line per offending import, naming the rule."""
    subs = set(subpackages)
    out = []
    for imp in found:
        source = package_of(imp.module, subs)
        if source == "services" or imp.target.split(".")[0] not in TOP:
            continue  # the entry points compose every part; third-party imports are not ruled here
        target = package_of(imp.target, subs)
        allowed = MAY_IMPORT.get(source, frozenset())
        if target == source or target in allowed or (source, imp.target) in ALLOWED_EDGES:
            continue
        may = ", ".join(sorted(allowed)) or "no other part of the hub"
        out.append(f"{imp}  ({source} may import: {may})")
    return out


def subpackages(root: Path = ROOT) -> set[str]:
    """The packages directly under services/ (each needs a rule)."""
    return {f"services.{p.parent.name}" for p in (root / "services").glob("*/__init__.py")}


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def loads(found: list[Import], starts: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Each way a module of the ``starts`` packages reaches a module of the ``forbidden`` packages (or
    top-level packages), through our own imports: the chain of modules, ending at the import that
    loads it."""
    starts, forbidden = tuple(starts), tuple(forbidden)
    graph: dict[str, list[Import]] = {}
    for imp in found:
        graph.setdefault(imp.module, []).append(imp)
    out: dict[Import, str] = {}  # the offending import -> the first chain found to it
    for start in sorted(m for m in graph if _within(m, starts)):
        seen = {start}
        queue: list[tuple[str, list[str]]] = [(start, [start])]
        while queue:
            module, chain = queue.pop(0)
            for imp in graph.get(module, []):
                if _within(imp.target, forbidden):
                    out.setdefault(imp, " -> ".join(chain) + f"  ({imp})")
                    continue
                # importing a.b.c runs a/__init__ and a/b/__init__ too
                parts = imp.target.split(".")
                for n in range(1, len(parts) + 1):
                    step = ".".join(parts[:n])
                    if step in graph and step not in seen:
                        seen.add(step)
                        queue.append((step, [*chain, step]))
    return list(out.values())


def http_loads(found: list[Import], workers: Iterable[str]) -> list[str]:
    """Each way a worker package's module reaches an HTTP server package (see ``loads``)."""
    return loads(found, workers, HTTP_SERVERS)


# --- the rules hold ------------------------------------------------------------------------------------


def test_each_part_imports_only_what_its_rule_allows() -> None:
    breaks = rule_breaks(all_imports(), subpackages())
    assert not breaks, "imports across the package rules:\n" + "\n".join(breaks)


def test_every_package_under_services_has_a_rule() -> None:
    missing = sorted(subpackages() - set(MAY_IMPORT))
    assert not missing, f"add a line to MAY_IMPORT in tests/test_architecture.py for: {missing}"


def test_the_workers_load_no_http_server_package() -> None:
    found = http_loads(all_imports(), WORKERS)
    assert not found, "a worker reaches an HTTP server package:\n" + "\n".join(found)


def test_intake_loads_no_other_room() -> None:
    # Not the read side, the pathway, the notifier nor mapping code, even through shared/: intake's
    # process accepts and acknowledges, and only the API composes the rooms.
    found = loads(all_imports(), [INTAKE], NOT_FROM_INTAKE)
    assert not found, "intake reaches another room:\n" + "\n".join(found)


def test_only_the_entry_points_import_the_api() -> None:
    importers = sorted(
        str(i) for i in all_imports() if _within(i.target, [API]) and not _within(i.module, [API, *API_IMPORTERS])
    )
    assert not importers, "only services/runner.py and services/cli.py import services/api/:\n" + "\n".join(importers)


def test_every_allowed_edge_is_still_used() -> None:
    # An allow-listed edge that no longer exists is deleted, so the list only gets shorter.
    subs = subpackages()
    used = {(package_of(i.module, subs), i.target) for i in all_imports()}
    stale = sorted(set(ALLOWED_EDGES) - used)
    assert not stale, f"remove from ALLOWED_EDGES (no longer imported): {stale}"


# --- the checker sees what it must ---------------------------------------------------------------------


def _parse(module: str, source: str, known: Iterable[str] = ()) -> list[Import]:
    path = Path(*module.split(".")).with_suffix(".py")
    return list(imports_of(module, path, source, known))


@pytest.mark.parametrize(
    ("module", "source", "offending"),
    [
        # the pathway reading the mapper (absolute, relative, inside a function, for type checking only)
        ("services.pathway.sla", "from services.mapper.hl7.mscc import care_plan_id", "services.mapper.hl7.mscc"),
        ("services.pathway.sla", "from ..mapper import pathway", "services.mapper"),
        ("services.pathway.sla", "def f():\n    import services.intake.app\n", "services.intake.app"),
        (
            "services.pathway.sla",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from services.notifier import model\n",
            "services.notifier",
        ),
        ("services.pathway.commit", "from services.intake.fhir_intake import fhir_record", "services.intake"),
        ("shared.fhir", "from services.pathway import plan", "services.pathway"),
        ("services.mapper.writer", "from ..intake.search import parse", "services.intake.search"),
        ("services.notifier.lane", "from services.intake.fhir_reads import read", "services.intake.fhir_reads"),
        ("services.notifier.lane", "from services.mapper.model import Patch", "services.mapper.model"),
        ("services.intake.service", "from services.mapper.hl7 import map_hl7v2", "services.mapper.hl7"),
        # intake keeps the inbound flows: not the read side, the pathway or the notifier
        ("services.intake.routes_fhir", "from services.api.fhir_reads import FhirReads", "services.api.fhir_reads"),
        ("services.intake.service", "from ..pathway.service import PathwayService", "services.pathway.service"),
        ("services.intake.routes_fhir", "from services.notifier import subscriptions", "services.notifier"),
        # FHIR search is shared/'s, not intake's; nothing but the entry points imports the API
        ("services.notifier.matching", "from services.intake.search import parse_search", "services.intake.search"),
        ("services.pathway.scanner", "from services.api.deps import Api", "services.api.deps"),
        ("services.mapper.worker", "from ..api import app", "services.api"),
    ],
)
def test_a_forbidden_import_is_reported_with_its_module_and_line(module: str, source: str, offending: str) -> None:
    subs = {"services.pathway", "services.mapper", "services.notifier", "services.intake", "services.api"}
    breaks = rule_breaks(_parse(module, source), subs)
    assert len(breaks) == 1 and module in breaks[0] and f"imports {offending}" in breaks[0], breaks


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("services.mapper.writer", "from services.pathway.record import keep_pathway"),
        ("services.mapper.hl7.steps", "from ..model import Patch\nfrom . import tables"),
        ("services.notifier.matching", "from shared.search import parse_search"),
        ("services.api.app", "from ..pathway.service import PathwayService\nfrom services.notifier import model"),
        ("services.api.app", "from ..intake import routes_hl7\nfrom ..intake.service import IntakeService"),
        ("services.intake.routes_fhir", "from shared.http_server import FhirResponse\nfrom .deps import Intake"),
        ("services.runner", "from .mapper.service import MapperService\nfrom .api.app import create_app"),
        ("services.pathway.plan", "from shared.patches import Patch\nimport json"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    subs = {"services.pathway", "services.mapper", "services.notifier", "services.intake", "services.api"}
    assert rule_breaks(_parse(module, source), subs) == []


def test_a_worker_reaching_an_http_server_through_another_module_is_reported() -> None:
    found = [
        *_parse("services.mapper.service", "from services.pathway import hna", {"services.pathway.hna"}),
        *_parse("services.pathway.hna", "from shared.web import page"),
        *_parse("shared.web", "import json\nfrom starlette.responses import Response"),
        *_parse("services.api.app", "import fastapi"),  # not a worker: allowed
    ]
    reached = http_loads(found, WORKERS)
    assert reached == [
        "services.mapper.service -> services.pathway.hna -> shared.web"
        "  (shared/web.py:2: shared.web imports starlette.responses)"
    ]


def test_intake_reaching_another_room_through_another_module_is_reported() -> None:
    found = [
        *_parse("services.intake.service", "from shared.helpers import clock", {"shared.helpers"}),
        *_parse("shared.helpers", "from services.pathway.updates import UPDATABLE"),
        *_parse("services.api.app", "from services.pathway import service"),  # the API may: not reported
    ]
    reached = loads(found, [INTAKE], NOT_FROM_INTAKE)
    assert reached == [
        "services.intake.service -> shared.helpers"
        "  (shared/helpers.py:1: shared.helpers imports services.pathway.updates)"
    ]
