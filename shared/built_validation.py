"""Validating the resources the hub builds itself: a quick check first, full validation when it is unsure.

Every resource is validated before it is written (``shared/versions.py``). Full validation
(``fhir.validate``: the fhir.resources models) builds a pydantic model for every element, which was
about half of the mapper's CPU. For content the hub builds itself (the HL7v2 mapping, the pathway's
Encounter, CarePlan and Tasks, patches of stored resources), ``validate_built`` first runs ``conforms``:
a walk of the resource against the same models' field tables, which checks

- every key is an element of its type (or ``resourceType`` naming that type, at a resource's root);
- every value has its element's shape: an object for a complex type, a non-empty array where the
  element repeats, never null, never an empty object or array;
- every primitive value with the very validator the model uses for that element (the pydantic
  ``TypeAdapter`` of its annotation): codes, ids, uris, dates, dateTimes, decimals, booleans...;
- the required elements are present, and a choice element (``value[x]``) has at most one type (and
  one when it is required);
- contained resources as resources of their own ``resourceType``.

It answers True only when every element was checked this way; anything it does not handle (primitive
extensions ``_x``, ``fhir_comments``, an element typed as any Element, an unknown type) makes it
answer False, and ``validate_built`` then validates in full, which raises ``FhirError`` naming what is
wrong. So a resource the quick check passes is one full validation passes too
(``tests/test_built_validation.py`` checks this on every output of the golden corpus and on every
element of them made invalid in turn), and an invalid one still fails with the full validator's
answer. Resources received from outside (FHIR intake, FHIR Bundle entries) are always validated in
full. See ``docs/decisions/0009-quick-validation-of-built-resources.md``.
"""

from __future__ import annotations

import contextlib
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import TypeAdapter, ValidationError

from .fhir import Resource, validate

# Element kinds: a primitive (checked by its adapter), a complex type (walked), any resource (walked as
# the type its resourceType names), or something the quick check leaves to full validation.
PRIMITIVE, COMPLEX, RESOURCE, UNSURE = "primitive", "complex", "resource", "unsure"


SEEN_LIMIT = 4096  # primitive values remembered per element (codes, systems, profiles repeat)


@dataclass(frozen=True)
class _Element:
    kind: str
    many: bool
    model: Any = None  # COMPLEX: the model class
    adapter: Any = None  # PRIMITIVE: the model's own validator of the whole value (pydantic-core)
    # PRIMITIVE: verdicts on values already checked, by (type, value): the adapter is deterministic.
    seen: dict[Any, bool] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class _Type:
    name: str
    elements: dict[str, _Element]  # by JSON name
    required: frozenset[str]  # JSON names that must be present
    choices: tuple[tuple[tuple[str, ...], bool], ...]  # (JSON names of one choice, required)


def _without_none(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _element(annotation: Any) -> _Element:
    options = _without_none(annotation)
    if len(options) != 1:
        return _Element(UNSURE, False)
    inner, many = options[0], False
    if typing.get_origin(inner) is list:
        many = True
        listed = _without_none(typing.get_args(inner)[0])
        if len(listed) != 1:
            return _Element(UNSURE, True)
        inner = listed[0]
    if isinstance(inner, type) and issubclass(inner, FhirBase):
        model = inner.get_model_klass()
        if issubclass(inner, FhirElementOrResourceBase):
            return _Element(RESOURCE if model.__name__ == "Resource" else UNSURE, many)
        if model.__name__ == "FHIRPrimitiveExtension":
            return _Element(UNSURE, many)
        return _Element(COMPLEX, many, model=model)
    return _Element(PRIMITIVE, many, adapter=TypeAdapter(annotation).validator)


@functools.cache
def _type(model: Any) -> _Type:
    """A model's element table, built once per model class from its pydantic fields."""
    fields = model.model_fields
    alias = {name: (f.alias or name) for name, f in fields.items()}
    elements = {alias[name]: _element(f.annotation) for name, f in fields.items()}
    blank = model.model_construct()
    required = {alias[name] for name, f in fields.items() if f.is_required()}
    required |= {alias[name] for name, _ in blank.get_required_fields()}
    choices = []
    for names in blank.get_one_of_many_fields().values():
        extra = fields[names[0]].json_schema_extra or {}
        choices.append((tuple(alias[n] for n in names), extra.get("one_of_many_required") is True))
    return _Type(model.__name__, elements, frozenset(required), tuple(choices))


def _primitive_ok(element: _Element, value: Any) -> bool:
    if element.many:
        if type(value) is not list or not value or None in value:
            return False
        key: Any = tuple((type(v), v) for v in value)
    elif type(value) in (list, dict):
        return False
    else:
        key = (type(value), value)
    try:
        return element.seen[key]
    except (KeyError, TypeError):  # TypeError: unhashable (a nested list): checked, not remembered
        pass
    try:
        element.adapter.validate_python(value)
        verdict = True
    except (ValidationError, ValueError, TypeError):
        verdict = False
    with contextlib.suppress(TypeError):
        if len(element.seen) >= SEEN_LIMIT:
            element.seen.clear()
        element.seen[key] = verdict
    return verdict


def _object_ok(element: _Element, item: Any) -> bool:
    if type(item) is not dict or not item:
        return False
    if element.kind == COMPLEX:
        return _complex_ok(element.model, item, root=False)
    return _resource_ok(item)


def _complex_ok(model: Any, data: dict[str, Any], *, root: bool) -> bool:
    table = _type(model)
    elements = table.elements
    for key, value in data.items():
        element = elements.get(key)
        if element is None:
            if key == "resourceType" and root:
                continue
            return False
        if value is None:  # a null element: absent to pydantic, but a required one is then missing
            return False
        kind = element.kind
        if kind == PRIMITIVE:
            if not _primitive_ok(element, value):
                return False
        elif kind == UNSURE:
            return False
        elif element.many:
            if type(value) is not list or not value or not all(_object_ok(element, item) for item in value):
                return False
        elif not _object_ok(element, value):
            return False
    if not table.required <= data.keys():
        return False
    for names, needed in table.choices:
        present = sum(1 for n in names if n in data)
        if present > 1 or (needed and present == 0):
            return False
    return True


def _resource_ok(data: dict[str, Any]) -> bool:
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return False
    model = _resource_model(rtype)
    return model is not None and _complex_ok(model, data, root=True)


@functools.cache
def _resource_model(rtype: str) -> Any:
    """The model class of resource type ``rtype``; None when it names no resource."""
    try:
        model = get_fhir_model_class(rtype)
    except (ValueError, KeyError):
        return None
    if not model.has_resource_base() or model.__resource_type__ != rtype:
        return None
    return model


def conforms(resource: Resource) -> bool:
    """True when the quick check verified every element of ``resource`` (so full validation passes it);
    False when it found a fault or met something it leaves to full validation. Never raises."""
    try:
        return isinstance(resource, dict) and _resource_ok(resource)
    except Exception:  # a fault of the quick check itself (a model it does not read): full validation decides
        return False


def validate_built(resource: Resource) -> Resource:
    """``resource`` unchanged when it conforms; otherwise ``fhir.validate`` (``FhirError`` naming the
    fault, or the resource when the quick check was only unsure)."""
    if conforms(resource):
        return resource
    return validate(resource)
