"""Property-based tests of the whole HTTP API from its own OpenAPI document (schemathesis).

Every operation of ``/openapi.json`` is called in process (ASGI) with generated paths, parameters,
headers and bodies, valid and invalid alike, a bounded number of times each (about a minute in all).
What must hold for every answer: no 5xx, and every error on a ``/fhir`` path is an OperationOutcome.
The app runs against the session's real mongod, started by its own lifespan on the event loop
schemathesis serves it from (a MongoDB client belongs to the loop it was created on).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from starlette.types import Receive, Scope, Send

from services.api.app import create_app
from services.intake.service import IntakeService
from shared.settings import Settings
from shared.store import Store, connect

# Positive (as the document describes) and negative (what it excludes) cases, half each on average.
EXAMPLES_PER_OPERATION = 15
# ER7 is text: generated bodies for POST /hl7v2 are sent as plain text is.
schemathesis.serializer.alias("application/hl7-v2", "text/plain")


class HubUnderTest:
    """The hub's app behind a lifespan that builds the store and intake on the serving loop and drops
    the test database when it stops."""

    def __init__(self, settings: Settings, mongodb_uri: str) -> None:
        self.settings = settings
        self.uri = mongodb_uri
        self.app: Any = None
        self.service: IntakeService | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            # The test client's peer ("testclient") as the loopback caller it is: the development
            # client is admitted from loopback only, and everything else would be a 401.
            await self.app({**scope, "client": ("127.0.0.1", 50000)}, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        self.client = connect(self.uri, app_name="mscc-schemathesis")
        store = Store(self.client, self.settings.db_name)
        await store.ensure_schema()
        self.service = IntakeService(self.settings, store)
        await self.service.start(mllp=False)
        self.app = create_app(self.service)

    async def _stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        await self.client.drop_database(self.settings.db_name)
        await self.client.close()


def _check(case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:400]}"
    if case.formatted_path.startswith("/fhir") and response.status_code >= 400:
        body = json.loads(response.content)
        assert body.get("resourceType") == "OperationOutcome", f"{where} -> {response.status_code}: {body}"
        assert body.get("issue"), f"{where}: an OperationOutcome without an issue"


def test_every_operation_answers_without_server_errors(settings: Settings, mongodb_uri: str) -> None:
    hub = HubUnderTest(settings.model_copy(update={"db_name": f"test_st_{uuid.uuid4().hex[:10]}"}), mongodb_uri)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", hub)
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert len(operations) > 20  # the document describes the API, not a stub
        for operation in operations:
            cases = st.one_of(
                operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )

            @given(case=cases)
            @examples(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def calls(case: Any) -> None:
                _check(case, case.call())

            calls()
    finally:
        shutdown_lifespans()
