"""The Python heap of a long-running process, settled once it has started.

CPython's cyclic garbage collector from time to time examines every container object the process
holds (its oldest generation). A hub process holds some hundred thousand of them once started, nearly
all made at start-up and kept for good (the FHIR models, the mapping tables, the web application,
the database client); examining them took 50 to 70 ms, during which the event loop answered no one:
the worst stall a small message met while large ones arrived (``bench/stall.py``).

``settle()`` collects once, then moves everything still alive into a permanent generation the
collector no longer examines (``gc.freeze``), so a later full collection looks only at what was made
since. What start-up made is meant to live as long as the process; the collector still frees what is
made after. Call it once, when the process has started everything it keeps, never in a library or a
test process (what it freezes is never collected).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def settle() -> None:
    """Collect, then freeze what start-up left (see the module docstring); logs what it froze."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap settled",
        extra={"frozen_objects": gc.get_freeze_count(), "ms": round((time.perf_counter() - started) * 1000)},
    )
