"""The pathway's data files (``services/pathway/data/*.json``), each read once per process.

Every file is a JSON object with a ``_source`` note saying where its content comes from. A file that is
missing, not JSON or without its note fails loudly at first use (``FileNotFoundError`` /
``ValueError``): a broken deployment, never a reason to guess.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import Any


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The whole data file ``data/<name>.json``."""
    text = files(__package__).joinpath("data", f"{name}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict) or "_source" not in data:
        raise ValueError(f"pathway data file {name!r} must be a JSON object with a _source note")
    return data
