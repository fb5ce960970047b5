"""The FHIR Subscription API (R4, Subscriptions Backport): thin handlers over the notifier's
``SubscriptionService`` (the router is the API's, so the notifier's modules stay free of any HTTP server).

    POST   /fhir/Subscription                      create (201; the generated secret in X-Subscription-Secret)
    GET    /fhir/Subscription                      search: status, _id, _count, _offset
    GET    /fhir/Subscription/{id}                 read (ETag)
    PUT    /fhir/Subscription/{id}                 update (If-Match optional)
    DELETE /fhir/Subscription/{id}                 delete, with its queue
    GET|POST /fhir/Subscription/{id}/$status       status Parameters in a searchset Bundle
    GET|POST /fhir/Subscription/{id}/$events       past notifications: eventsSinceNumber, eventsUntilNumber, content
    POST   /fhir/Subscription/{id}/$redeliver      dead-lettered events again (eventNumber: one of them)
    POST   /fhir/Subscription/{id}/$skip           give dead-lettered events up (eventNumber: one of them)

A trust manages its own subscriptions only (another's is 404); the MSCC team manages every trust's.
Channel headers are write-only: every answer gives them masked (``notifier/channel_headers.py``).
Operation parameters travel in the query string. Included before the generic FHIR router, whose
``/{type}/{id}`` routes would otherwise take these paths.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from services.notifier.subscriptions import SECRET_HEADER, SubscriptionService, Written
from shared.fhir import FhirError, Resource, check_content_type, parse_json
from shared.http_server import CallerDep, FhirResponse, read_body

from .deps import Api

router = APIRouter(prefix="/fhir/Subscription", tags=["FHIR Subscriptions"])
MAX_BODY = 64 * 1024


def get_subscriptions(api: Api) -> SubscriptionService:
    return SubscriptionService(api.store, api.settings)


Subscriptions = Annotated[SubscriptionService, Depends(get_subscriptions)]
EventNumber = Annotated[str | None, Query(alias="eventNumber")]


async def _resource(request: Request) -> Resource:
    check_content_type(request.headers.get("content-type"))
    body, size = await read_body(request, MAX_BODY)
    if size > MAX_BODY:
        raise FhirError(413, "too-costly", f"a Subscription over {MAX_BODY // 1024} KiB is not accepted")
    return parse_json(body)


def _written(written: Written, base: str, status: int = 200) -> FhirResponse:
    headers = {"ETag": f'W/"{written.version}"', "Last-Modified": str(written.resource["meta"]["lastUpdated"])}
    if status == 201:
        headers["Location"] = f"{base}/fhir/Subscription/{written.resource['id']}/_history/{written.version}"
    if written.secret:
        headers[SECRET_HEADER] = written.secret
        headers["Cache-Control"] = "no-store"
    return FhirResponse(written.resource, status_code=status, headers=headers)


@router.post("", summary="Create a Subscription", status_code=201, response_class=FhirResponse)
async def create(request: Request, service: Subscriptions, caller: CallerDep, api: Api) -> FhirResponse:
    written = await service.create(await _resource(request), caller)
    return _written(written, api.settings.base_url, 201)


@router.get("", summary="Search Subscriptions", response_class=FhirResponse)
async def search(request: Request, service: Subscriptions, caller: CallerDep) -> FhirResponse:
    return FhirResponse(await service.search(list(request.query_params.multi_items()), caller))


@router.get("/{subscription_id}", summary="Read a Subscription", response_class=FhirResponse)
async def read(subscription_id: str, service: Subscriptions, caller: CallerDep, api: Api) -> FhirResponse:
    return _written(await service.read(subscription_id, caller), api.settings.base_url)


@router.put("/{subscription_id}", summary="Update a Subscription", response_class=FhirResponse)
async def update(
    subscription_id: str,
    request: Request,
    service: Subscriptions,
    caller: CallerDep,
    api: Api,
    if_match: Annotated[str | None, Header()] = None,
) -> FhirResponse:
    written = await service.update(subscription_id, await _resource(request), caller, if_match)
    return _written(written, api.settings.base_url)


@router.delete("/{subscription_id}", summary="Delete a Subscription and its queue", status_code=204)
async def delete(subscription_id: str, service: Subscriptions, caller: CallerDep) -> Response:
    await service.delete(subscription_id, caller)
    return Response(status_code=204)


@router.get("/{subscription_id}/$status", summary="Subscription status", response_class=FhirResponse)
@router.post(
    "/{subscription_id}/$status", summary="Subscription status", response_class=FhirResponse, operation_id="status_post"
)
async def status(subscription_id: str, service: Subscriptions, caller: CallerDep) -> FhirResponse:
    return FhirResponse(await service.status(subscription_id, caller))


@router.get("/{subscription_id}/$events", summary="Past notifications", response_class=FhirResponse)
@router.post(
    "/{subscription_id}/$events", summary="Past notifications", response_class=FhirResponse, operation_id="events_post"
)
async def events(
    subscription_id: str,
    service: Subscriptions,
    caller: CallerDep,
    since: Annotated[str | None, Query(alias="eventsSinceNumber")] = None,
    until: Annotated[str | None, Query(alias="eventsUntilNumber")] = None,
    content: str | None = None,
) -> FhirResponse:
    return FhirResponse(await service.events(subscription_id, caller, since, until, content))


@router.post("/{subscription_id}/$redeliver", summary="Redeliver dead-lettered events", response_class=FhirResponse)
async def redeliver(
    subscription_id: str,
    service: Subscriptions,
    caller: CallerDep,
    number: EventNumber = None,
) -> FhirResponse:
    return FhirResponse(await service.redeliver(subscription_id, caller, number))


@router.post("/{subscription_id}/$skip", summary="Skip dead-lettered events", response_class=FhirResponse)
async def skip(
    subscription_id: str,
    service: Subscriptions,
    caller: CallerDep,
    number: EventNumber = None,
) -> FhirResponse:
    return FhirResponse(await service.skip(subscription_id, caller, number))
