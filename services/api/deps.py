"""The API's services and its FastAPI dependency: what a request handler of ``services/api/`` works with.

``ApiServices`` is built once per app, over an already-constructed ``IntakeService`` (whose store,
settings and clock it shares): the read side, the pathway, and intake itself (for its inbound routes and
to keep a refused body as a rejected message record).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shared.settings import Settings
from shared.store import Store

from ..intake.service import IntakeService
from ..pathway.service import PathwayService
from .fhir_reads import FhirReads


class ApiServices:
    def __init__(self, intake: IntakeService) -> None:
        self.intake = intake
        self.store: Store = intake.store
        self.settings: Settings = intake.settings
        self.reads = FhirReads(intake.store, intake.settings.base_url)
        self.pathway = PathwayService(intake.store, intake.clock)


def get_api(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.api
    return services


Api = Annotated[ApiServices, Depends(get_api)]
