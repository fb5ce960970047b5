"""Code tables as data: the JSON files in ``services/mapper/tables/``, loaded once per process.

Every file has a ``_source`` note and a ``map`` (code -> target). Lookups try the code as sent, then
upper-cased (senders differ: "Med" and "MED"). A file that is missing or not JSON fails loudly at
first use (``FileNotFoundError`` / ``ValueError``): a broken deployment, not a bad message.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import Any

_PACKAGE = "services.mapper"


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The whole table file ``tables/<name>.json``."""
    text = files(_PACKAGE).joinpath("tables", f"{name}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict) or "_source" not in data:
        raise ValueError(f"code table {name!r} must be a JSON object with a _source note")
    return data


def entries(name: str) -> dict[str, Any]:
    """The ``map`` of table ``name``."""
    mapping = load(name).get("map", {})
    return mapping if isinstance(mapping, dict) else {}


def lookup(name: str, code: str) -> Any:
    """The target for ``code`` in table ``name``, or None when the code is empty or not in the table."""
    if not code:
        return None
    table = entries(name)
    if code in table:
        return table[code]
    return table.get(code.upper())


def text(name: str, code: str) -> str | None:
    """A string target (None when absent or not a string)."""
    value = lookup(name, code)
    return value if isinstance(value, str) else None
