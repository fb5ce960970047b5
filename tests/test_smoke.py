from __future__ import annotations

from services.intake.service import IntakeService
from shared.mllp import MllpClient


async def test_one_message_over_mllp_is_stored_then_acknowledged(intake: IntakeService) -> None:
    message = b"MSH|^~\\&|APP|FAC|HUB|REN|20260101120000||ADT^A01|MSG1|P|2.5\rPID|1||123^^^FAC^MR\r"
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port)
    try:
        ack = await client.send(message)
    finally:
        await client.close()
    assert b"MSA|AA|MSG1" in ack
    stored = await intake.store.messages.find_one({"header.control_id": "MSG1"})
    assert stored is not None
    assert stored["raw"] == message
    assert stored["status"] == "ready"
