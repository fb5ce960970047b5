"""What the text of a FHIR JSON body may hold, checked once after parsing (``shared.fhir.parse_json``).

JSON itself allows things FHIR, MongoDB or a later reader do not, and each would otherwise surface as a
crash or a silent change far from the request that brought it:

- a key given twice in one object (``"status": "active", ..., "status": "revoked"``): JSON parsers keep
  either one, so the sender and this server could read different resources: 400 naming the key;
- control characters (U+0000-U+001F but tab, CR and LF; U+007F) in a string or a key: the FHIR string
  type excludes them, and MongoDB cannot store a NUL in a key: 400 naming the path;
- unpaired UTF-16 surrogates (``"\\ud800"``): valid JSON escapes, but not text, and not storable: 400;
- a resource id that is not a FHIR id (1-64 letters, digits, '-', '.'): it would become a document
  ``_id``: 400;
- an Identifier.value or a Reference.reference longer than an index key can be (``MAX_KEY_BYTES``):
  these are indexed for search, so such a resource could never be stored: 422 naming the path.

Paths are FHIRPath-like (``ServiceRequest.note[0].text``), rooted at the body's ``resourceType``.
"""

from __future__ import annotations

import re
from typing import Any

from .ids import MAX_KEY_BYTES, is_fhir_id

# Everything the FHIR string type excludes: C0 controls but tab, LF and CR; DEL; unpaired surrogates.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INDEX = re.compile(r"\[\d+\]$")


class DuplicateKeys(dict[str, Any]):
    """A JSON object in which a key appeared more than once (the later value kept), so that the check
    can name the path; ``parse_json`` refuses any body holding one."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: list[str]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a plain dict, or ``DuplicateKeys`` naming the repeats."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return DuplicateKeys(pairs, duplicates)


def _describe(char: str) -> str:
    code = ord(char)
    return f"an unpaired surrogate U+{code:04X}" if 0xD800 <= code <= 0xDFFF else f"control character U+{code:04X}"


def _printable(key: str) -> str:
    """``key`` as a path may show it: what the FHIR string type excludes escaped (``\\u0000``), so an
    answer or a kept reason never carries a NUL or an unpaired surrogate itself."""
    return _FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


def string_problem(text: str) -> str | None:
    """What makes ``text`` not a FHIR string (a control character, an unpaired surrogate), or None."""
    found = _FORBIDDEN.search(text)
    return None if found is None else f"{_describe(found.group())} at position {found.start()}"


def check_strings(data: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """Every problem in ``data`` as (status, code, diagnostics, path), in document order; empty when the
    body holds nothing refused (see the module docstring). Iterative: depth is checked elsewhere."""
    root = data.get("resourceType")
    root_path = root if isinstance(root, str) and root and string_problem(root) is None else "$"
    found: list[tuple[int, str, str, str]] = []
    stack: list[tuple[Any, str, str]] = [(data, root_path, "")]
    while stack and len(found) < 50:
        value, path, key = stack.pop()
        if isinstance(value, dict):
            found.extend(_object_problems(value, path))
            children = [(v, f"{path}.{_printable(k)}", k) for k, v in value.items()]
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(v, f"{path}[{i}]", key) for i, v in enumerate(value)]))
        elif isinstance(value, str):
            problem = string_problem(value)
            if problem is not None:
                found.append((400, "invalid", f"{path} holds {problem}: not allowed in a FHIR string", path))
            elif key in ("value", "reference") and _indexed(path, key) and len(value.encode()) > MAX_KEY_BYTES:
                found.append(
                    (
                        422,
                        "too-long",
                        f"{path} is {len(value.encode())} bytes long: this server stores and searches "
                        f"identifiers and references of at most {MAX_KEY_BYTES} bytes",
                        path,
                    )
                )
    return found


def _indexed(path: str, key: str) -> bool:
    """Whether a string at ``path`` is one the store indexes: an Identifier's value, a Reference."""
    if key == "reference":
        return True
    parent = _INDEX.sub("", path.rsplit(".", 1)[0])
    return parent.endswith(".identifier")


def _object_problems(obj: dict[str, Any], path: str) -> list[tuple[int, str, str, str]]:
    found = []
    for key in obj:
        problem = string_problem(key)
        if problem is not None:
            found.append((400, "invalid", f"a key in {path} holds {problem}", path))
    if isinstance(obj, DuplicateKeys):
        for key in obj.duplicates:
            name = _printable(key)
            found.append((400, "structure", f"key {name!r} appears more than once in {path}", f"{path}.{name}"))
    rid = obj.get("id")
    if "resourceType" in obj and isinstance(rid, str) and not is_fhir_id(rid):
        found.append(
            (
                400,
                "invalid",
                f"{path}.id {rid[:80]!r} is not a FHIR id (1-64 letters, digits, '-' or '.')",
                f"{path}.id",
            )
        )
    return found
