"""Required terminology bindings of FHIR R4: which coded elements may hold only the codes of one value set.

fhir.resources checks structure and datatypes but not value sets, so ``ServiceRequest.status: "bogus"``
passes it. The elements with a *required* binding in FHIR R4 (4.0.1), and the codes of their value sets,
are data (``data/required_bindings.json``, with its source); this module reads them once and checks a
resource against them: its own elements, its contained resources and, for a Bundle, its entries'
resources. A ``code`` must be one of the codes; a CodeableConcept bound to a code system must carry a
coding of that system with one of the codes (a coding of another system alone does not satisfy a
required binding). Nothing is raised here: the answer is a list of OperationOutcome issues, empty when
the resource conforms, and the caller decides how to refuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

ALL_TYPES = "*"  # rules in this section apply to every resource type


@dataclass(frozen=True)
class ValueSet:
    """A required value set: its canonical URL, its codes in published order, the code system of its codings."""

    name: str
    url: str
    codes: tuple[str, ...]
    system: str | None = None

    def allows(self, code: str) -> bool:
        return code in self.codes


@dataclass(frozen=True)
class Binding:
    """An element (a dotted path below its resource, each step a single value or a list) and its value set."""

    path: tuple[str, ...]
    value_set: ValueSet


@cache
def required_bindings() -> dict[str, tuple[Binding, ...]]:
    """The table by resource type (``"*"``: every type), read once from the package data."""
    raw = json.loads(files("shared").joinpath("data/required_bindings.json").read_text(encoding="utf-8"))
    value_sets = {
        name: ValueSet(name, spec["url"], tuple(spec["codes"]), spec.get("system"))
        for name, spec in raw["valueSets"].items()
    }
    return {
        rtype: tuple(Binding(tuple(path.split(".")), value_sets[vs]) for path, vs in rules.items())
        for rtype, rules in raw["bindings"].items()
    }


def _values_at(node: Any, path: tuple[str, ...], where: str) -> Iterator[tuple[str, Any]]:
    """Every value at ``path`` below ``node``, with its FHIRPath (list items indexed)."""
    if not path:
        yield where, node
        return
    if not isinstance(node, Mapping) or path[0] not in node:
        return
    step, value = path[0], node[path[0]]
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _values_at(item, path[1:], f"{where}.{step}[{index}]")
    else:
        yield from _values_at(value, path[1:], f"{where}.{step}")


def _issue(where: str, diagnostics: str) -> dict[str, Any]:
    return {"severity": "error", "code": "code-invalid", "diagnostics": diagnostics, "expression": [where]}


def _allowed(value_set: ValueSet) -> str:
    return f"the required value set {value_set.url} allows {', '.join(value_set.codes)}"


def _coding_issues(where: str, value: Mapping[str, Any], value_set: ValueSet) -> list[dict[str, Any]]:
    """A CodeableConcept (or a Coding) against a value set drawn from one code system."""
    is_concept = "coding" in value or "text" in value
    codings = value.get("coding", []) if is_concept else [value]
    items = [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []
    ours = [c for c in items if c.get("system") == value_set.system]
    if not ours:
        shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in items) or "no coding (text only)"
        return [_issue(where, f"{where} has {shown}: it needs a coding of {value_set.system}; {_allowed(value_set)}")]
    return [
        _issue(where, f"{where} code {c.get('code')!r} of {value_set.system} is not allowed: {_allowed(value_set)}")
        for c in ours
        if not isinstance(c.get("code"), str) or not value_set.allows(c["code"])
    ]


def _value_issues(where: str, value: Any, value_set: ValueSet) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return (
            []
            if value_set.allows(value)
            else [_issue(where, f"{where} {value!r} is not allowed: {_allowed(value_set)}")]
        )
    if isinstance(value, Mapping) and value_set.system:
        return _coding_issues(where, value, value_set)
    return []  # any other shape is a structure error, which model validation reports


def _nested(resource: Mapping[str, Any], where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The resources inside this one: contained resources, and a Bundle's entries."""
    contained = resource.get("contained")
    for index, item in enumerate(contained if isinstance(contained, list) else []):
        if isinstance(item, Mapping):
            yield item, f"{where}.contained[{index}]"
    if resource.get("resourceType") == "Bundle":
        entries = resource.get("entry")
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            inner = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(inner, Mapping):
                yield inner, f"{where}.entry[{index}].resource"


def binding_issues(resource: Mapping[str, Any], where: str | None = None) -> list[dict[str, Any]]:
    """One OperationOutcome issue (``code-invalid``, with the element's FHIRPath and the allowed codes) per
    coded element of ``resource``, its contained resources and its Bundle entries that is outside its
    required value set; empty when all conform. ``where`` is the resource's own path (default its type)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return []
    where = where or rtype
    table = required_bindings()
    issues: list[dict[str, Any]] = []
    for binding in (*table.get(ALL_TYPES, ()), *table.get(rtype, ())):
        for path, value in _values_at(resource, binding.path, where):
            issues += _value_issues(path, value, binding.value_set)
    for inner, inner_where in _nested(resource, where):
        issues += binding_issues(inner, inner_where)
    return issues
