"""Pointing a message's resources at the stored patient it was matched to, and keeping recorded merges.

An HL7v2 message's Patient may be matched (``matching.resolve``) to a Patient stored under another id
(the one its NHS number gives, or the survivor of a merge): ``retarget`` rewrites every reference to
the mapped id, and the Patient's own id, to the stored one; ``retarget_patch`` does the same for what a
patch produces. ``keep_links`` keeps a merge recorded in ``Patient.link`` when a later message does not
mention it. Pure functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.normalise import rewrite_references

from .model import Patch, Resource


def keep_links(current: Resource | None, new: Resource) -> Resource:
    """A patient merge recorded in ``link`` survives later messages that do not mention it."""
    if not current or new.get("resourceType") != "Patient" or not current.get("link"):
        return new
    links = list(new.get("link") or [])
    seen = {(link.get("other", {}).get("reference"), link.get("type")) for link in links}
    for link in current["link"]:
        if (link.get("other", {}).get("reference"), link.get("type")) not in seen:
            links.append(link)
    return {**new, "link": links}


def retarget(resource: Any, aliases: dict[str, str]) -> Any:
    """``resource`` with every reference to an aliased Patient replaced, and, when it is an aliased
    Patient itself, its own id."""
    out = rewrite_references(resource, aliases)
    if isinstance(out, dict) and out.get("resourceType") == "Patient" and f"Patient/{out.get('id')}" in aliases:
        out["id"] = aliases[f"Patient/{out['id']}"].removeprefix("Patient/")
    return out


def retarget_patch(patch: Patch, aliases: dict[str, str]) -> Patch:
    """``patch`` aimed at the aliased Patient (when it patches one), its output retargeted."""
    key = aliases.get(f"{patch.resource_type}/{patch.resource_id}")
    target = key.removeprefix("Patient/") if key else patch.resource_id

    def apply(current: Resource | None) -> Resource:
        return dict(retarget(patch.apply(current), aliases))

    def apply_with(current: Resource | None, context: Mapping[str, Resource]) -> Resource:
        assert patch.apply_with is not None
        return dict(retarget(patch.apply_with(current, context), aliases))

    return dataclasses.replace(
        patch, resource_id=target, apply=apply, apply_with=apply_with if patch.apply_with else None
    )
