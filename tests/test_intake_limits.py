"""Intake's connection limits over real sockets: the cap on MLLP connections, the total frame timeout
(a sender trickling bytes is cut, its partial frame kept), and the bytes-in-flight budget that makes
readers wait (and the message still acknowledged afterwards), over MLLP and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from services.api.app import create_app
from services.intake.service import IntakeService
from shared.budget import ByteBudget
from shared.mllp import MllpClient, frame
from shared.settings import Settings
from shared.store import Store


def adt(control_id: str, padding: int = 0) -> bytes:
    note = f"NTE|1||{'x' * padding}\r" if padding else ""
    return (
        f"MSH|^~\\&|SEND|RBL|HUB|REN|20260101120000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||{control_id}^^^RBL^MR||TEST^PATIENT\r{note}"
    ).encode()


def msa(reply: bytes) -> list[str]:
    return next(s for s in reply.split(b"\r") if s.startswith(b"MSA")).decode().split("|")


@contextlib.asynccontextmanager
async def running(settings: Settings, store: Store, **update: Any) -> AsyncIterator[IntakeService]:
    service = IntakeService(settings.model_copy(update=update), store)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def test_connections_over_the_cap_are_closed_at_once_and_counted(settings: Settings, store: Store) -> None:
    async with running(settings, store, mllp_max_connections=2) as service:
        port = service.mllp.port
        first = await MllpClient.connect("127.0.0.1", port)
        second = await MllpClient.connect("127.0.0.1", port)
        assert msa(await first.send(adt("CAP1")))[1] == "AA"
        assert msa(await second.send(adt("CAP2")))[1] == "AA"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once, before any reading
        assert time.monotonic() - started < 2
        writer.close()
        assert service.mllp.stats.refused == 1 and service.mllp.stats.open_connections == 2
        await first.close()
        await until(lambda: service.mllp.stats.open_connections == 1, "the first connection is gone")
        third = await MllpClient.connect("127.0.0.1", port)
        assert msa(await third.send(adt("CAP3")))[1] == "AA"  # room again
        await second.close()
        await third.close()


async def test_a_trickling_sender_is_cut_at_the_total_frame_timeout_and_its_bytes_kept(
    settings: Settings, store: Store
) -> None:
    # Each byte comes well within the stall timeout (5 s): only the total timeout can end the frame.
    async with running(settings, store, mllp_frame_timeout_s=5, mllp_frame_total_timeout_s=1.5) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.mllp.port)
        message = frame(adt("SLOW1"))
        closed = asyncio.create_task(reader.read())
        started = time.monotonic()
        sent = 0
        with contextlib.suppress(ConnectionError):
            while not closed.done() and sent < len(message) - 2:
                writer.write(message[sent : sent + 1])
                await writer.drain()
                sent += 1
                await asyncio.wait([closed], timeout=0.25)
        try:
            answered = await asyncio.wait_for(closed, 5)
        except ConnectionResetError:  # cut while a byte was in flight: the kernel resets, not closes
            answered = b""
        assert answered == b""  # cut, nothing acknowledged
        elapsed = time.monotonic() - started
        writer.close()
        assert 1.4 <= elapsed < 4, f"cut after {elapsed:.1f}s"
        assert service.mllp.stats.timeouts == 1
    [kept] = [doc async for doc in store.messages.find({})]
    assert kept["status"] == "rejected" and "MSCC_MLLP_FRAME_TOTAL_TIMEOUT_S" in kept["reason"]
    assert kept["raw"].startswith(b"\x0bMSH|") and message.startswith(kept["raw"])
    assert "ack" not in kept or not kept["ack"]


async def hold_partial(port: int, data: bytes, budget: ByteBudget, until_used: int) -> MllpClient:
    """A connection that has sent the start of a frame and stops: its bytes stay held in the budget."""
    client = await MllpClient.connect("127.0.0.1", port)
    await client.send_raw(data)
    await until(lambda: budget.used >= until_used, f"{until_used} bytes are held")
    return client


async def test_readers_wait_for_the_byte_budget_and_the_message_is_then_acknowledged(
    settings: Settings, store: Store
) -> None:
    kib = 1024
    limits = {"mllp_max_message_bytes": 128 * kib, "intake_max_bytes_in_flight": 256 * kib}
    async with running(settings, store, **limits) as service:
        budget, port = service.budget, service.mllp.port
        whole = {name: frame(adt(name, padding=size * kib)) for name, size in (("A", 120), ("B", 120), ("C", 100))}
        # A and B hold 240 KiB of unfinished frames, within the budget; C goes past it (it is the one
        # reader allowed to, to finish its message) and stops too.
        a = await hold_partial(port, whole["A"][: 120 * kib], budget, 120 * kib)
        b = await hold_partial(port, whole["B"][: 120 * kib], budget, 240 * kib)
        c = await hold_partial(port, whole["C"][: 100 * kib], budget, 340 * kib)
        assert budget.stats.overdrafts == 1
        # D's small, complete message finds no room: its reader waits, and it is not answered.
        d = await MllpClient.connect("127.0.0.1", port)
        waits = budget.stats.waits
        reply = asyncio.create_task(d.send(adt("D")))
        await until(lambda: budget.waiting == 1, "D's reader waits for room")
        await asyncio.sleep(0.3)
        assert not reply.done() and budget.stats.waits == waits + 1
        assert await store.messages.count_documents({"header.control_id": "D"}) == 0
        # C ends its frame: stored and answered, its bytes are freed, and D is read and answered.
        await c.send_raw(whole["C"][100 * kib :])
        assert msa(await c.receive())[1:3] == ["AA", "C"]
        assert msa(await asyncio.wait_for(reply, 10))[1:3] == ["AA", "D"]
        for client, name in ((a, "A"), (b, "B")):
            await client.send_raw(whole[name][120 * kib :])
            assert msa(await client.receive())[1:3] == ["AA", name]
        for client in (a, b, c, d):
            await client.close()
        await until(lambda: budget.used == 0, "every byte is given back")
        assert budget.stats.peak <= budget.capacity + budget.overdraft


async def test_an_http_body_waits_for_the_byte_budget_too(settings: Settings, store: Store) -> None:
    kib = 1024
    limits = {"mllp_max_message_bytes": 128 * kib, "intake_max_bytes_in_flight": 256 * kib}
    async with running(settings, store, **limits) as service:
        budget, port = service.budget, service.mllp.port
        first = frame(adt("H1", padding=120 * kib))
        second = frame(adt("H2", padding=120 * kib))
        third = frame(adt("H3", padding=100 * kib))
        held = [
            await hold_partial(port, first[: 120 * kib], budget, 120 * kib),
            await hold_partial(port, second[: 120 * kib], budget, 240 * kib),
            await hold_partial(port, third[: 100 * kib], budget, 340 * kib),
        ]
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            post: Awaitable[httpx.Response] = http.post(
                "/hl7v2", content=adt("H4"), headers={"Content-Type": "application/hl7-v2"}
            )
            answer = asyncio.ensure_future(post)
            await until(lambda: budget.waiting == 1, "the HTTP body's read waits for room")
            assert not answer.done()
            await held[2].send_raw(third[100 * kib :])
            assert msa(await held[2].receive())[1] == "AA"
            response = await asyncio.wait_for(answer, 10)
        assert response.status_code == 200 and msa(response.content)[1:3] == ["AA", "H4"]
        for client in held:
            await client.close()
        await until(lambda: budget.used == 0, "every byte is given back")
