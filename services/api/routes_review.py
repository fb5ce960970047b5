"""Operator API for messages held for review (``shared.review``): thin handlers.

    GET  /admin/messages?status=needs-review&limit=50   held records, oldest first, conflicts masked
    POST /admin/messages/{id}/apply                     write it despite the conflict (who/when recorded)
    POST /admin/messages/{id}/reject   {"reason": ...}  close it, nothing written (who/when/why recorded)

Errors are JSON ``{"detail": ...}``: 404 no such record, 409 not waiting for review, 400 no reason,
403 a caller without the write scope, or not the MSCC team's (held messages name patients of every
trust: only the MSCC team reviews them).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.encoders import jsonable_encoder

from shared import review
from shared.auth import Caller
from shared.scopes import ANY_TYPE, needed

from .authorisation import MsccTeam
from .deps import Api

router = APIRouter(prefix="/admin/messages", tags=["operations"])
WRITE_SCOPE = "system/*.u"  # update on every type: system/*.write or system/*.cruds grant it too


def _check_write(caller: Caller) -> None:
    if not caller.allows(needed(ANY_TYPE, "u")):
        raise HTTPException(403, f"deciding a held message needs the {WRITE_SCOPE} scope (or a wider one)")


@router.get("", summary="Messages held for review (only status needs-review is listed here)")
async def held(
    api: Api,
    caller: MsccTeam,
    status: Annotated[str, Query()] = review.NEEDS_REVIEW,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    if status != review.NEEDS_REVIEW:
        raise HTTPException(400, f"only status={review.NEEDS_REVIEW} is listed here; see 'mscc messages list'")
    docs = await review.held(api.store, limit)
    return jsonable_encoder({"total": len(docs), "messages": [review.summary(d) for d in docs]})


async def _decided(action: Any) -> Any:
    try:
        doc = await action
    except review.ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return jsonable_encoder(review.summary(doc))


@router.post("/{record_id}/apply", summary="Write a held message despite its conflict")
async def apply(record_id: str, api: Api, caller: MsccTeam) -> Any:
    _check_write(caller)
    return await _decided(review.apply(api.store, record_id, caller.client_id))


@router.post("/{record_id}/reject", summary="Reject a held message: nothing from it is written")
async def reject(
    record_id: str, api: Api, caller: MsccTeam, reason: Annotated[str, Body(embed=True, min_length=1)]
) -> Any:
    _check_write(caller)
    return await _decided(review.reject(api.store, record_id, caller.client_id, reason))
