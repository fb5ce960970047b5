"""HL7v2 over HTTP (POST /hl7v2): the ACK in the body, HTTP status for transport problems only."""

from __future__ import annotations

import httpx

from services.intake.service import IntakeService

HL7 = {"Content-Type": "application/hl7-v2"}
MESSAGE = b"MSH|^~\\&|SEND|FAC|HUB|REN|20260101||ADT^A01|H1|P|2.5\rPID|1||123^^^FAC^MR\r"


async def test_message_is_stored_and_acknowledged(http: httpx.AsyncClient, intake: IntakeService) -> None:
    response = await http.post("/hl7v2", content=MESSAGE, headers=HL7)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/hl7-v2")
    assert "\rMSA|AA|H1\r" in response.text
    stored = await intake.store.messages.find_one({"_id": response.headers["x-message-id"]})
    assert stored is not None and stored["raw"] == MESSAGE and stored["channel"] == "http"


async def test_application_errors_are_still_http_200(http: httpx.AsyncClient) -> None:
    response = await http.post("/hl7v2", content=b"PID|1||123\r", headers=HL7)
    assert response.status_code == 200
    assert "MSA|AR|" in response.text


async def test_http_charset_wins_over_msh18(http: httpx.AsyncClient, intake: IntakeService) -> None:
    body = "MSH|^~\\&|SEND|Hôpital|HUB|REN|2026||ADT^A01|H2|P|2.5||||||UNICODE UTF-8\rPID|1\r".encode("latin-1")
    response = await http.post(
        "/hl7v2", content=body, headers={"Content-Type": "application/hl7-v2; charset=ISO-8859-1"}
    )
    assert "MSA|AA|H2" in response.text
    stored = await intake.store.messages.find_one({"header.control_id": "H2"})
    assert stored is not None and "Hôpital" in stored["text"] and stored["issues"] == []


async def test_wrong_content_type_is_a_transport_error_in_plain_text(http: httpx.AsyncClient) -> None:
    response = await http.post("/hl7v2", content=MESSAGE, headers={"Content-Type": "application/json"})
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("text/plain")
    assert "MSH" not in response.text


async def test_oversize_body_is_413_and_kept(http: httpx.AsyncClient, intake: IntakeService) -> None:
    body = MESSAGE + b"NTE|1||" + b"z" * (intake.settings.mllp_max_message_bytes + 10) + b"\r"
    response = await http.post("/hl7v2", content=body, headers=HL7)
    assert response.status_code == 413
    kept = await intake.store.messages.find_one({"truncated": True})
    assert kept is not None and kept["size"] == len(body)
