"""The FHIR REST conventions clients rely on, over raw HTTP against the real app and store.

_summary (count, true, text, data, false) and _count=0; _elements with the SUBSETTED tag; _format and
_pretty on every interaction, 406 for XML; conditional read (304); Prefer on create and update; history
(instance and type) paged with links and _since; HEAD; an update carrying meta.versionId instead of
If-Match; the OpenAPI document's bodies and parameters; a CapabilityStatement that says exactly this.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fhir_referrals import FHIR, referral

from services.api.fhir_reads import TYPE_ORDER
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.search import PARAMETERS
from shared.store import Store
from shared.subsetting import SUBSETTED

TRUSTS = ("RBL", "RJR", "REM")


async def create(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = await http.post("/fhir/ServiceRequest", json=body, headers={**FHIR, **headers})
    assert response.status_code == 201, response.text
    return response


@pytest.fixture
async def referrals(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Three trusts' referrals under the same local number, as created (version 1)."""
    return [(await create(http, referral("000123", trust))).json() for trust in TRUSTS]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def subsetted(resource: dict[str, Any]) -> bool:
    return any(
        t.get("code") == "SUBSETTED" and t.get("system") == SUBSETTED["system"] for t in resource["meta"].get("tag", [])
    )


# --- _summary=count and _count=0 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"_summary": "count"},
        {"_count": "0"},
        {"_count": "0", "_totalMethod": "count"},
        {"_summary": "count", "_total": "accurate"},
    ],
    ids=["summary-count", "count-0", "fhirpy-count", "with-total"],
)
async def test_a_count_answers_the_total_and_no_entries(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], query: dict[str, str]
) -> None:
    response = await http.get("/fhir/ServiceRequest", params={"status": "active", **query})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 3
    assert "entry" not in bundle  # FHIR JSON has no empty arrays
    assert [link["relation"] for link in bundle["link"]] == ["self"]  # no next link to loop on


async def test_total_takes_only_its_values(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    response = await http.get("/fhir/ServiceRequest", params={"_total": "roughly"})
    assert response.status_code == 400
    assert "_total" in response.json()["issue"][0]["diagnostics"]


# --- _summary and _elements ----------------------------------------------------------------------------


async def test_summary_true_keeps_the_summary_elements_tagged(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]]
) -> None:
    rid = referrals[0]["id"]
    whole = (await http.get(f"/fhir/ServiceRequest/{rid}")).json()
    summary = (await http.get(f"/fhir/ServiceRequest/{rid}", params={"_summary": "true"})).json()
    assert "note" in whole and "contained" in whole
    assert "note" not in summary and "contained" not in summary  # not summary elements
    for kept in ("identifier", "status", "intent", "priority", "subject", "requester", "occurrenceDateTime"):
        assert summary[kept] == whole[kept], kept
    assert subsetted(summary) and not subsetted(whole)
    assert summary["meta"]["versionId"] == whole["meta"]["versionId"]
    found = (await http.get("/fhir/ServiceRequest", params={"_summary": "true", "_count": "2"})).json()
    assert found["total"] == 3 and len(found["entry"]) == 2
    assert all(subsetted(e["resource"]) and "note" not in e["resource"] for e in found["entry"])
    assert "_summary=true" in found["link"][1]["url"]  # the next page keeps the summary


async def test_summary_text_data_and_false(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    rid = referrals[1]["id"]
    whole = (await http.get(f"/fhir/ServiceRequest/{rid}")).json()
    text = (await http.get(f"/fhir/ServiceRequest/{rid}", params={"_summary": "text"})).json()
    # No narrative is stored: text keeps the mandatory elements only.
    assert set(text) == {"resourceType", "id", "meta", "status", "intent", "subject"} | ({"text"} & set(whole))
    data = (await http.get(f"/fhir/ServiceRequest/{rid}", params={"_summary": "data"})).json()
    assert "text" not in data and data["note"] == whole["note"] and subsetted(data)
    full = (await http.get(f"/fhir/ServiceRequest/{rid}", params={"_summary": "false"})).json()
    assert full == whole


async def test_elements_keeps_what_is_asked_and_what_is_mandatory(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]]
) -> None:
    rid = referrals[2]["id"]
    whole = (await http.get(f"/fhir/ServiceRequest/{rid}")).json()
    response = await http.get(f"/fhir/ServiceRequest/{rid}", params={"_elements": "identifier,note,occurrence"})
    assert response.status_code == 200
    trimmed = response.json()
    # occurrence covers occurrenceDateTime; status, intent and subject are mandatory (1..1).
    assert set(trimmed) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "note",
        "occurrenceDateTime",
        "status",
        "intent",
        "subject",
    }
    assert trimmed["note"] == whole["note"] and subsetted(trimmed)
    vread = (await http.get(f"/fhir/ServiceRequest/{rid}/_history/1", params={"_elements": "priority"})).json()
    assert vread["priority"] == "urgent" and "note" not in vread and subsetted(vread)
    found = (await http.get("/fhir/ServiceRequest", params={"_elements": "priority", "status": "active"})).json()
    assert {e["resource"]["priority"] for e in found["entry"]} == {"urgent"}
    assert all(
        set(e["resource"]) == {"resourceType", "id", "meta", "priority", "status", "intent", "subject"}
        for e in found["entry"]
    )


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"_elements": "subject.reference"}, "top-level"),
        ({"_summary": "true", "_elements": "note"}, "together"),
        ({"_summary": "brief"}, "_summary"),
    ],
)
async def test_subset_requests_that_cannot_be_honoured_are_refused(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], query: dict[str, str], words: str
) -> None:
    rid = referrals[0]["id"]
    for path in (f"/fhir/ServiceRequest/{rid}", "/fhir/ServiceRequest"):
        response = await http.get(path, params=query)
        assert response.status_code == 400, (path, response.text)
        assert words in response.json()["issue"][0]["diagnostics"]
    count_on_read = await http.get(f"/fhir/ServiceRequest/{rid}", params={"_summary": "count"})
    assert count_on_read.status_code == 400
    unknown_on_read = await http.get(f"/fhir/ServiceRequest/{rid}", params={"_sort": "date"})
    assert unknown_on_read.status_code == 400


# --- _format, _pretty, Accept, HEAD --------------------------------------------------------------------


def interactions(rid: str, referral_body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, int]]:
    """Every interaction the CapabilityStatement lists for a ServiceRequest, with the status it answers."""
    validate = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": referral("9", "RBL")}]}
    return [
        ("GET", "/metadata", None, 200),
        ("GET", "/fhir/metadata", None, 200),
        ("GET", f"/fhir/ServiceRequest/{rid}", None, 200),
        ("GET", f"/fhir/ServiceRequest/{rid}/_history/1", None, 200),
        ("GET", f"/fhir/ServiceRequest/{rid}/_history", None, 200),
        ("GET", "/fhir/ServiceRequest/_history", None, 200),
        ("GET", "/fhir/ServiceRequest", None, 200),
        ("GET", "/fhir/ServiceRequest/_search", None, 200),
        ("POST", "/fhir/ServiceRequest/$validate", validate, 200),
        ("POST", "/fhir/ServiceRequest", referral("000777", "RJR"), 201),
        ("PUT", f"/fhir/ServiceRequest/{rid}", referral_body, 200),
        (
            "POST",
            "/fhir",
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"resource": referral("000888", "REM"), "request": {"method": "POST", "url": "ServiceRequest"}}
                ],
            },
            202,
        ),
    ]


@pytest.mark.parametrize(
    "fmt", ["json", "application/fhir+json", "application/json", "application/fhir+json;fhirVersion=4.0"]
)
async def test_format_json_is_accepted_on_every_interaction(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], fmt: str
) -> None:
    rid = referrals[0]["id"]
    for method, path, body, status in interactions(rid, referrals[0]):
        response = await http.request(
            method, path, params={"_format": fmt, "_pretty": "true"}, json=body, headers=FHIR if body else {}
        )
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/fhir+json"), (method, path)


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"_format": "xml"}, {}),
        ({"_format": "application/fhir+xml"}, {}),
        ({"_format": "text/xml"}, {"Accept": "application/fhir+json"}),  # _format overrides Accept
        ({}, {"Accept": "application/fhir+xml"}),
        ({}, {"Accept": "application/xml, text/xml;q=0.9"}),
        ({}, {"Accept": "application/fhir+json;q=0, application/fhir+xml"}),
    ],
    ids=["format-xml", "format-fhir-xml", "format-wins", "accept-fhir-xml", "accept-xml-list", "json-refused-by-q0"],
)
async def test_xml_is_answered_406_before_anything_is_stored(
    http: httpx.AsyncClient,
    store: Store,
    referrals: list[dict[str, Any]],
    params: dict[str, str],
    headers: dict[str, str],
) -> None:
    rid = referrals[0]["id"]
    before = await store.messages.count_documents({})
    for method, path, body, _ in interactions(rid, referrals[0]):
        response = await http.request(
            method, path, params=params, json=body, headers={**(FHIR if body else {}), **headers}
        )
        assert response.status_code == 406, (method, path, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "not-supported"
    assert await store.messages.count_documents({}) == before  # not even kept as rejected: never read


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        "application/*",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "application/fhir+xml;q=0.9, application/fhir+json",
    ],
)
async def test_an_accept_admitting_json_is_answered(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], accept: str
) -> None:
    response = await http.get(f"/fhir/ServiceRequest/{referrals[0]['id']}", headers={"Accept": accept})
    assert response.status_code == 200 and response.json()["id"] == referrals[0]["id"]


async def test_pretty_indents_the_answer(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    url = f"/fhir/ServiceRequest/{referrals[0]['id']}"
    compact = await http.get(url)
    pretty = await http.get(url, params={"_pretty": "true"})
    assert pretty.json() == compact.json() and b'\n  "resourceType": "ServiceRequest"' in pretty.content
    assert int(pretty.headers["content-length"]) == len(pretty.content) > len(compact.content)
    assert pretty.headers["etag"] == compact.headers["etag"]
    assert b"\n" not in (await http.get(url, params={"_pretty": "false"})).content
    found = await http.get("/fhir/ServiceRequest", params={"_pretty": "true", "_summary": "count"})
    assert found.json()["total"] == 3 and found.content.startswith(b'{\n  "resourceType": "Bundle"')
    head = await http.head(url, params={"_pretty": "true"})
    assert head.content == b"" and head.headers["content-length"] == pretty.headers["content-length"]


async def test_malformed_pretty_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.get("/fhir/ServiceRequest", params={"_pretty": "very"})
    assert response.status_code == 400 and "_pretty" in response.text


async def test_format_in_a_search_form_is_honoured(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    ok = await http.post(
        "/fhir/ServiceRequest/_search", content=b"status=active&_format=json&_summary=count", headers=form
    )
    assert ok.status_code == 200 and ok.json()["total"] == 3
    xml = await http.post("/fhir/ServiceRequest/_search", content=b"_format=xml", headers=form)
    assert xml.status_code == 406


@pytest.mark.parametrize(
    "path",
    [
        "/metadata",
        "/fhir/metadata",
        "/fhir/ServiceRequest/{rid}",
        "/fhir/ServiceRequest/{rid}/_history/1",
        "/fhir/ServiceRequest?status=active",
        "/fhir/ServiceRequest/{rid}/_history",
        "/fhir/ServiceRequest/_history",
    ],
)
async def test_head_answers_the_get_headers_without_a_body(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], path: str
) -> None:
    url = path.format(rid=referrals[0]["id"])
    got = await http.get(url)
    head = await http.head(url)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    for name in ("content-type", "etag", "last-modified"):
        assert head.headers.get(name) == got.headers.get(name), name
    if "metadata" not in url:  # the statement's date is built per request; resources are stored bytes
        assert head.headers["content-length"] == got.headers["content-length"]
    missing = await http.head("/fhir/ServiceRequest/not-a-referral")
    assert missing.status_code == 404 and missing.content == b""


# --- conditional read ----------------------------------------------------------------------------------


async def test_if_none_match_and_if_modified_since_answer_304(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]]
) -> None:
    rid = referrals[0]["id"]
    url = f"/fhir/ServiceRequest/{rid}"
    first = await http.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag == 'W/"1"'
    for tag in (etag, '"1"', "1", 'W/"7", W/"1"', "*"):  # fhirpy sends the bare versionId
        response = await http.get(url, headers={"If-None-Match": tag})
        assert response.status_code == 304, tag
        assert response.content == b"" and response.headers["etag"] == etag
    assert (await http.get(url, headers={"If-None-Match": 'W/"2"'})).status_code == 200
    assert (await http.get(f"{url}/_history/1", headers={"If-None-Match": etag})).status_code == 304
    assert (await http.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert (await http.get(url, headers={"If-Modified-Since": later})).status_code == 304
    earlier = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert (await http.get(url, headers={"If-Modified-Since": earlier})).status_code == 200
    assert (await http.get(url, headers={"If-Modified-Since": "last tuesday"})).status_code == 200  # ignored
    # If-None-Match wins over If-Modified-Since, as HTTP says.
    stale = await http.get(url, headers={"If-None-Match": 'W/"0"', "If-Modified-Since": later})
    assert stale.status_code == 200 and stale.json()["id"] == rid


# --- Prefer ---------------------------------------------------------------------------------------------


async def test_prefer_on_create(http: httpx.AsyncClient, store: Store) -> None:
    minimal = await create(http, referral("000201", "RBL"), Prefer="return=minimal")
    assert minimal.content == b"" and minimal.headers["etag"] == 'W/"1"'
    location = minimal.headers["location"]
    assert (await http.get(path_of(location))).json()["identifier"][0]["value"] == "000201"
    whole = await create(http, referral("000202", "RJR"), Prefer="return=representation")
    assert whole.json()["resourceType"] == "ServiceRequest" and whole.json()["meta"]["versionId"] == "1"
    # return=OperationOutcome keeps its NHS number warning (a number failing the modulus 11 check).
    bad_number = referral("000203", "REM", subject={"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9449305553"}})
    outcome = (await create(http, bad_number, Prefer="return=OperationOutcome")).json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["severity"] for i in outcome["issue"]] == ["warning", "information"]
    assert "created" in outcome["issue"][-1]["diagnostics"]
    again = await http.post(
        "/fhir/ServiceRequest", json=referral("000201", "RBL"), headers={**FHIR, "Prefer": "return=minimal"}
    )
    assert again.status_code == 200 and again.content == b""  # already there: unchanged, still minimal


async def test_prefer_on_update(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    current = referrals[0]
    url = f"/fhir/ServiceRequest/{current['id']}"
    changed = {**current, "priority": "asap"}
    minimal = await http.put(url, json=changed, headers={**FHIR, "If-Match": 'W/"1"', "Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.content == b"" and minimal.headers["etag"] == 'W/"2"'
    changed = {**changed, "note": [{"text": "now incontinent - pls expedite"}]}
    told = await http.put(url, json=changed, headers={**FHIR, "If-Match": 'W/"2"', "Prefer": "return=OperationOutcome"})
    assert told.status_code == 200 and told.headers["etag"] == 'W/"3"'
    assert told.json()["resourceType"] == "OperationOutcome"
    assert "updated to version 3" in told.json()["issue"][-1]["diagnostics"]
    same = await http.put(url, json=changed, headers={**FHIR, "If-Match": 'W/"3"', "Prefer": "return=OperationOutcome"})
    assert "unchanged" in same.json()["issue"][-1]["diagnostics"] and same.headers["etag"] == 'W/"3"'
    whole = await http.put(url, json=changed, headers={**FHIR, "If-Match": 'W/"3"', "Prefer": "return=representation"})
    assert whole.json()["note"] == changed["note"] and whole.json()["priority"] == "asap"


# --- update with meta.versionId ----------------------------------------------------------------------------


async def test_update_without_if_match_uses_the_body_version(
    http: httpx.AsyncClient, store: Store, referrals: list[dict[str, Any]]
) -> None:
    read = (await http.get(f"/fhir/ServiceRequest/{referrals[1]['id']}")).json()
    url = f"/fhir/ServiceRequest/{read['id']}"
    read["priority"] = "stat"
    saved = await http.put(url, json=read, headers=FHIR)
    assert saved.status_code == 200, saved.text
    assert saved.json()["meta"]["versionId"] == "2" and saved.json()["priority"] == "stat"
    # The same body again carries version 1, which is no longer current: refused, not applied.
    stale = await http.put(url, json={**read, "priority": "routine"}, headers=FHIR)
    assert stale.status_code == 412 and "version 2" in stale.json()["issue"][0]["diagnostics"]
    bare = {k: v for k, v in read.items() if k != "meta"}
    assert (await http.put(url, json=bare, headers=FHIR)).status_code == 428
    garbled = await http.put(url, json={**read, "meta": {"versionId": "two"}}, headers=FHIR)
    assert garbled.status_code == 400
    # If-Match, when sent, is what counts (here it is stale although the body's version is current).
    current = (await http.get(url)).json()
    assert (await http.put(url, json=current, headers={**FHIR, "If-Match": 'W/"1"'})).status_code == 412
    doc = await store.resources.find_one({"_id": f"ServiceRequest/{read['id']}"})
    assert doc is not None and doc["version"] == 2 and doc["resource"]["priority"] == "stat"


# --- history -------------------------------------------------------------------------------------------


async def test_instance_history_pages_with_links_and_since(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]]
) -> None:
    rid = referrals[0]["id"]
    url = f"/fhir/ServiceRequest/{rid}"
    for version, note in enumerate(["pt now c/o numbness L leg", "MRI booked 14:00", "MRI done, awaiting report"], 1):
        body = {**referrals[0], "note": [{"text": note}]}
        response = await http.put(url, json=body, headers={**FHIR, "If-Match": f'W/"{version}"'})
        assert response.status_code == 200, response.text
    page = (await http.get(f"{url}/_history", params={"_count": "3"})).json()
    assert page["type"] == "history" and page["total"] == 4
    assert [e["response"]["etag"] for e in page["entry"]] == ['W/"4"', 'W/"3"', 'W/"2"']
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert set(links) == {"self", "next"}
    rest = (await http.get(path_of(links["next"]))).json()
    assert [e["response"]["etag"] for e in rest["entry"]] == ['W/"1"']
    assert rest["entry"][0]["request"]["method"] == "POST"
    back = {link["relation"]: link["url"] for link in rest["link"]}
    assert "next" not in back and "_offset=0" in back["previous"]
    since = (await http.get(f"{url}/_history/3")).json()["meta"]["lastUpdated"]
    recent = (await http.get(f"{url}/_history", params={"_since": since})).json()
    assert [e["resource"]["meta"]["versionId"] for e in recent["entry"]] == ["4", "3"]


async def test_type_history_lists_every_version_newest_first(
    http: httpx.AsyncClient, store: Store, referrals: list[dict[str, Any]]
) -> None:
    first = referrals[2]
    changed = await http.put(
        f"/fhir/ServiceRequest/{first['id']}", json={**first, "priority": "asap"}, headers={**FHIR, "If-Match": 'W/"1"'}
    )
    assert changed.status_code == 200
    bundle = (await http.get("/fhir/ServiceRequest/_history")).json()
    assert bundle["type"] == "history" and bundle["total"] == 4
    assert bundle["entry"][0]["fullUrl"].endswith(f"/ServiceRequest/{first['id']}")
    assert bundle["entry"][0]["response"]["etag"] == 'W/"2"'
    ids = [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in bundle["entry"]]
    assert sorted(ids) == sorted([*((r["id"], "1") for r in referrals), (first["id"], "2")])
    paged = (await http.get("/fhir/ServiceRequest/_history", params={"_count": "3"})).json()
    following = next(link["url"] for link in paged["link"] if link["relation"] == "next")
    assert len((await http.get(path_of(following))).json()["entry"]) == 1
    # The index gives the order (no in-memory sort, which MongoDB caps at 32 MB), with or without _since.
    for query in (
        {"type": "ServiceRequest"},
        {"type": "ServiceRequest", "last_updated": {"$gte": datetime(2026, 1, 1)}},
    ):
        plan = await store.history.find(query).sort(TYPE_ORDER).limit(20).explain()
        assert '"SORT"' not in json.dumps(plan["queryPlanner"]["winningPlan"]), plan
    # Another type's history is its own (the referrals' patients are written by the mapper, not yet run).
    patients = (await http.get("/fhir/Patient/_history")).json()
    assert patients["type"] == "history" and patients["total"] == 0 and "entry" not in patients


@pytest.mark.parametrize(
    "query", [{"_count": "0"}, {"_count": "101"}, {"_offset": "-1"}, {"_since": "last week"}, {"_at": "2026-01-01"}]
)
async def test_history_refuses_what_it_does_not_take(
    http: httpx.AsyncClient, referrals: list[dict[str, Any]], query: dict[str, str]
) -> None:
    for path in (f"/fhir/ServiceRequest/{referrals[0]['id']}/_history", "/fhir/ServiceRequest/_history"):
        response = await http.get(path, params=query)
        assert response.status_code == 400, (path, query)
        assert response.json()["resourceType"] == "OperationOutcome"


# --- OpenAPI and the CapabilityStatement ------------------------------------------------------------------


async def test_openapi_describes_request_bodies_and_query_parameters(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    paths = document["paths"]

    def names(path: str, method: str) -> set[str]:
        return {p["name"] for p in paths[path][method].get("parameters", [])}

    def body_schema(path: str, method: str, media: str = "application/fhir+json") -> dict[str, Any]:
        schema: dict[str, Any] = paths[path][method]["requestBody"]["content"][media]["schema"]
        return schema

    every_search_parameter = {n for params in PARAMETERS.values() for n in params}
    search = names("/fhir/{resource_type}", "get")
    assert (
        every_search_parameter | {"_id", "_lastUpdated", "_count", "_offset", "_summary", "_elements", "_format"}
        <= search
    )
    assert {"_count", "_offset", "_since", "_format"} <= names("/fhir/{resource_type}/{resource_id}/_history", "get")
    assert {"_count", "_offset", "_since"} <= names("/fhir/{resource_type}/_history", "get")
    read = names("/fhir/{resource_type}/{resource_id}", "get")
    assert {"_summary", "_elements", "_format", "If-None-Match", "If-Modified-Since"} <= read
    assert {"if-none-exist", "prefer", "_format"} <= {n.lower() for n in names("/fhir/ServiceRequest", "post")}
    assert {"if-match", "prefer"} <= {n.lower() for n in names("/fhir/ServiceRequest/{resource_id}", "put")}
    assert body_schema("/fhir", "post")["$ref"].endswith("/Bundle")
    assert body_schema("/fhir/ServiceRequest", "post")["properties"]["resourceType"]["enum"] == ["ServiceRequest"]
    assert body_schema("/fhir/CarePlan/{resource_id}", "put")["properties"]["resourceType"]["enum"] == ["CarePlan"]
    assert body_schema("/fhir/ServiceRequest/{referral_id}/$transition", "post")["$ref"].endswith("/Parameters")
    assert len(body_schema("/fhir/{resource_type}/$validate", "post")["oneOf"]) == 2
    assert (
        "application/x-www-form-urlencoded" in paths["/fhir/{resource_type}/_search"]["post"]["requestBody"]["content"]
    )
    assert "application/hl7-v2" in paths["/hl7v2"]["post"]["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    assert {"FhirResource", "Bundle", "Parameters"} <= set(schemas)
    # Every request body and parameter is described: no POST/PUT under /fhir without a body but operations.
    for path, operations in paths.items():
        for method in ("post", "put"):
            if path.startswith("/fhir") and method in operations and not path.rsplit("/", 1)[-1].startswith("$"):
                assert "requestBody" in operations[method], (method, path)


async def test_capability_statement_says_what_works(http: httpx.AsyncClient, referrals: list[dict[str, Any]]) -> None:
    statement = (await http.get("/metadata")).json()
    assert {"application/fhir+json", "json"} <= set(statement["format"])
    assert not any("xml" in f for f in statement["format"])
    [rest] = statement["rest"]
    for words in ("_summary", "_elements", "SUBSETTED", "406", "HEAD", "If-None-Match", "_since", "_totalMethod"):
        assert words in rest["documentation"], words
    by_type = {r["type"]: r for r in rest["resource"]}
    request = by_type["ServiceRequest"]
    codes = {i["code"] for i in request["interaction"]}
    assert codes == {"create", "update", "read", "vread", "search-type", "history-instance", "history-type"}
    assert request["conditionalRead"] == "full-support"
    assert "meta.versionId" in request["documentation"]
    # Each declared interaction is served for each stored type.
    for rtype, resource in by_type.items():
        if rtype in ("Subscription", "AuditEvent"):  # their own searches (tests/test_subscriptions.py, test_audit.py)
            continue
        for code in {i["code"] for i in resource["interaction"]} & {"search-type", "history-type"}:
            path = f"/fhir/{rtype}" if code == "search-type" else f"/fhir/{rtype}/_history"
            response = await http.get(path, params={"_count": "1"})
            assert response.status_code == 200, (rtype, code, response.text)
        declared = {p["name"] for p in resource.get("searchParam", [])}
        assert declared <= set(PARAMETERS.get(rtype, {})) | {"_id", "_lastUpdated"}
