"""What the authenticated caller may see and do, as FastAPI dependencies of the API's routes.

``Who``: the caller's ``Visibility`` (``shared/visibility.py``): the MSCC team sees everything, a trust
what names it; every read puts it into its database query. ``MsccTeam``: the caller, refused with 403
unless it is one of the MSCC team's clients (operator routes such as ``/admin/messages``).

The pathway: the MSCC team moves a referral along its steps. A referring trust may cancel its own
referral (``$transition`` or its step extension in a PUT: step ``cancelled``) and update its other
content; any other move, and updates of the assessment Encounter and pathway CarePlan (the MSCC team's
records), are 403. Another trust's referral is 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException

from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.http_server import CallerDep
from shared.store import Document, Store
from shared.visibility import Visibility, is_mscc_team

from ..pathway.record import STEP_URL, current_step
from .deps import Api

# The steps a referring trust may move its own referral to.
REFERRER_STEPS = frozenset({"cancelled"})


def get_visibility(api: Api, caller: CallerDep) -> Visibility:
    return Visibility.of(caller, api.settings.receiving_facility)


def require_mscc_team(api: Api, caller: CallerDep) -> Caller:
    """The caller, if it is the MSCC team's (``HTTPException`` 403 naming the organisation otherwise)."""
    if not is_mscc_team(caller, api.settings.receiving_facility):
        raise HTTPException(
            403, f"organisation {caller.ods_code} may not use the MSCC team's operator routes (held messages)"
        )
    return caller


Who = Annotated[Visibility, Depends(get_visibility)]
MsccTeam = Annotated[Caller, Depends(require_mscc_team)]


def not_known(resource_type: str, resource_id: str) -> FhirError:
    """The 404 for a resource that does not exist, or that the caller may not see (the same answer)."""
    return FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")


async def visible(store: Store, who: Visibility, resource_type: str, resource_id: str) -> Document | None:
    """The current version of ``resource_type/resource_id`` if it exists and ``who`` may see it."""
    return await store.resources.find_one({"_id": f"{resource_type}/{resource_id}", **who.query()})


def check_move(who: Visibility, resource_id: str, step: str) -> None:
    """``FhirError`` 403 unless ``who`` may move referral ``resource_id`` to ``step``."""
    if who.everything or step in REFERRER_STEPS:
        return
    raise FhirError(
        403,
        "forbidden",
        f"the MSCC team moves referrals along the pathway; a referring trust may only cancel its own "
        f"referral (step {', '.join(sorted(REFERRER_STEPS))}), not move ServiceRequest/{resource_id} to {step!r}",
    )


def check_update(who: Visibility, stored: Document, body: Resource) -> None:
    """``FhirError`` 403 unless ``who`` may update ``stored`` with ``body``: a trust updates only its
    referral (not the MSCC team's Encounter or CarePlan), and changes its step only to cancel it."""
    if who.everything:
        return
    rtype, rid = stored["type"], stored["id"]
    if rtype != "ServiceRequest":
        raise FhirError(
            403,
            "forbidden",
            f"{rtype}/{rid} is the MSCC team's record of the referral: a referring trust updates its "
            "ServiceRequest only",
        )
    sent = any(isinstance(e, dict) and e.get("url") == STEP_URL for e in body.get("extension") or [])
    if sent and current_step(body) != current_step(stored["resource"]):
        check_move(who, rid, current_step(body))
