"""``_summary`` and ``_elements``: which top-level elements of a resource a read or search returns.

FHIR lets a client ask for less than the whole resource. What this server does:

- ``_summary=true``: the elements the specification marks "in summary" (from the fhir.resources
  models), ``_summary=text``: ``text`` with the mandatory elements, ``_summary=data``: all but ``text``,
  ``_summary=false``: everything (as without it), ``_summary=count``: on search only, the total and no
  entries (as ``_count=0``);
- ``_elements=a,b``: those top-level elements (a choice name such as ``occurrence`` covers
  ``occurrenceDateTime`` and its siblings); deeper paths (``name.family``) are refused with 400 rather
  than answered with more than was asked for.

``resourceType``, ``id``, ``meta`` and the elements the resource's definition requires are always kept,
as the specification asks. A subsetted resource carries the SUBSETTED tag in ``meta.tag`` so no client
mistakes it for the whole resource (and sends it back as an update). Failures are ``FhirError`` 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from fhir.resources.R4B import get_fhir_model_class

from shared.fhir import FhirError, Resource

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
# More names than any resource has elements: a longer list is refused, not matched name by name.
MAX_ELEMENTS = 100
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})


@dataclass(frozen=True)
class Subset:
    """What to keep of each resource: ``summary`` (one of SUMMARY_MODES, or None) and ``elements`` (the
    names asked for by ``_elements``, or None)."""

    summary: str | None = None
    elements: frozenset[str] | None = None

    @property
    def count_only(self) -> bool:
        return self.summary == "count"

    @property
    def trims(self) -> bool:
        return self.elements is not None or self.summary in ("true", "text", "data")


def parse_subset(params: list[tuple[str, str]]) -> Subset:
    """The ``_summary`` and ``_elements`` of ``params`` (other parameters are ignored here); ``FhirError``
    400 for an unknown ``_summary`` mode, a nested ``_elements`` path, or both given together."""
    summary: str | None = None
    elements: set[str] | None = None
    for name, value in params:
        if name == "_summary":
            if value not in SUMMARY_MODES:
                raise FhirError(400, "invalid", f"_summary={value!r} is not one of {', '.join(SUMMARY_MODES)}")
            summary = value
        elif name == "_elements":
            names = {part.strip() for part in value.split(",") if part.strip()}
            nested = sorted(n for n in names if "." in n)
            if nested:
                raise FhirError(
                    400,
                    "not-supported",
                    f"_elements takes top-level element names only (not {', '.join(nested)})",
                )
            elements = (elements or set()) | names
            if len(elements) > MAX_ELEMENTS:
                raise FhirError(
                    400, "too-costly", f"_elements names {len(elements)} elements: at most {MAX_ELEMENTS} are taken"
                )
    if summary is not None and summary != "false" and elements is not None:
        raise FhirError(400, "invalid", "_summary and _elements cannot be used together")
    return Subset(summary, frozenset(elements) if elements is not None else None)


@cache
def _definition(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the mandatory elements, the summary elements) of ``resource_type``, by their JSON names."""
    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return frozenset(), frozenset()
    mandatory, summary = set(), set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        json_name = info.alias or name
        if info.is_required() or extra.get("element_required"):
            mandatory.add(json_name)
        if extra.get("summary_element_property"):
            summary.add(json_name)
    return frozenset(mandatory), frozenset(summary)


def _named(key: str, names: frozenset[str]) -> bool:
    """Whether ``key`` (``status``, ``_status``, ``occurrenceDateTime``) is one of ``names`` (a choice
    element ``occurrence[x]`` is asked for as ``occurrence``)."""
    bare = key.removeprefix("_")
    if bare in names:
        return True
    return any(bare.startswith(n) and len(bare) > len(n) and bare[len(n)].isupper() for n in names)


def apply_subset(resource: Resource, subset: Subset) -> Resource:
    """``resource`` trimmed to ``subset`` and tagged SUBSETTED; unchanged when nothing is trimmed."""
    if not subset.trims:
        return resource
    mandatory, in_summary = _definition(str(resource.get("resourceType")))
    keep = ALWAYS_KEPT | mandatory
    if subset.elements is not None:
        chosen = subset.elements
    elif subset.summary == "text":
        chosen = frozenset({"text"})
    elif subset.summary == "true":
        chosen = in_summary
    else:  # data: everything but the narrative
        chosen = frozenset(k.removeprefix("_") for k in resource if k != "text")
    out = {k: v for k, v in resource.items() if k in keep or _named(k, keep) or _named(k, chosen)}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != SUBSETTED["code"]]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out
