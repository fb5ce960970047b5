"""What a lane's notifications are built from: the focus resource versions and the patients they are
about, read once per batch of deliveries. Building the notification itself is the channel's (``prepare``
in ``channels/``: the FHIR notification Bundle for rest-hook, the RRI^I12 for MLLP).

A focus that is no longer stored is simply absent: the channel builds what it can (an id-only Bundle
needs nothing) or fails to build, and the delivery is dead-lettered with the reason.
"""

from __future__ import annotations

from shared.fhir import Resource
from shared.store import Store

from .model import Delivery


def patient_reference(resource: Resource | None) -> str | None:
    """``Patient/id`` the resource is about: its ``subject``, or a Task's ``for`` (the data-quality Task)."""
    for key in ("subject", "for"):
        value = (resource or {}).get(key)
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


async def load_resources(store: Store, batch: list[Delivery], *, patients: bool) -> dict[str, Resource]:
    """The focus versions of the batch's pending deliveries by reference (``Type/id/_history/N`` from
    history, ``Type/id`` as current), and with ``patients`` the Patients they point at (``Patient/id``)."""
    refs = sorted({d.event.focus.reference for d in batch if d.status == "pending"})
    versioned = [r for r in refs if "/_history/" in r]
    history = store.history.find({"_id": {"$in": versioned}})
    found: dict[str, Resource] = {d["_id"]: d["resource"] async for d in history}
    current = [r for r in refs if "/_history/" not in r]
    if current:
        found.update({d["_id"]: d["resource"] async for d in store.resources.find({"_id": {"$in": current}})})
    if patients:
        wanted = sorted({ref for r in found.values() if (ref := patient_reference(r))})
        async for d in store.resources.find({"_id": {"$in": wanted}}):
            found[d["_id"]] = d["resource"]
    return found
