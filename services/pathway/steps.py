"""The MSCC pathway as data: its steps, what each implies for the FHIR resources, and the allowed moves.

::

    received ──> triaged-accepted ──> mri-requested ──> mri-reported ──> mdt-discussed ──> plan-agreed-*
       │   └───> triaged-advice-only (final)     └──────────^   (MRI already done)              │  ^
       └───────> triaged-not-mscc (final)                                                       v  │ plan revised
                                                     treatment-started <────────────────────────┘──┘
                                                             └──> completed (final)
    any step after acceptance ──> discharged (final)          any non-final step ──> cancelled (final)

Each step says what the referral ServiceRequest, the assessment Encounter and the pathway CarePlan
show (their ``status``), which CarePlan activities (``mri``, ``mdt``, ``plan``: the keys of
``data/mscc-pathway.json``) it starts or completes, and whether the MRI SLA clock
still runs. Nothing here does I/O; ``transitions.py`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAN_STEPS = (
    "plan-agreed-radiotherapy",
    "plan-agreed-surgery",
    "plan-agreed-systemic-therapy",
    "plan-agreed-best-supportive-care",
)
START = "received"
# The steps during which the MRI clock (NICE NG234: 24 hours / 7 days from first contact) runs.
CLOCK_STEPS = frozenset({"received", "triaged-accepted", "mri-requested"})


@dataclass(frozen=True)
class Step:
    """One pathway step: its code, display text, the statuses it implies, and where it may go next."""

    code: str
    display: str
    request_status: str  # ServiceRequest.status
    encounter_status: str  # Encounter.status of the MSCC assessment
    plan_status: str  # CarePlan.status of the MSCC pathway plan
    next: tuple[str, ...]
    starts: tuple[str, ...] = ()  # CarePlan activities that become "scheduled"
    completes: tuple[str, ...] = ()  # CarePlan activities that become "completed"

    @property
    def final(self) -> bool:
        return not self.next


def _plan_step(code: str, display: str) -> Step:
    others = tuple(p for p in PLAN_STEPS if p != code)
    return Step(
        code,
        display,
        "active",
        "in-progress",
        "active",
        ("treatment-started", *others, "discharged", "cancelled"),
        completes=("plan",),
    )


_ROWS = (
    Step(
        "received",
        "Referral received",
        "active",
        "planned",
        "active",
        ("triaged-accepted", "triaged-advice-only", "triaged-not-mscc", "cancelled"),
    ),
    Step(
        "triaged-accepted",
        "Triaged: accepted as suspected MSCC",
        "active",
        "in-progress",
        "active",
        ("mri-requested", "mri-reported", "discharged", "cancelled"),
    ),
    # Advice only and not MSCC end this referral: if the patient deteriorates the referrer refers again,
    # and the new referral starts a new clock from the new first contact.
    Step("triaged-advice-only", "Triaged: advice only", "completed", "finished", "revoked", ()),
    Step("triaged-not-mscc", "Triaged: not MSCC", "completed", "finished", "revoked", ()),
    Step(
        "mri-requested",
        "Whole-spine MRI requested",
        "active",
        "in-progress",
        "active",
        ("mri-reported", "discharged", "cancelled"),
        starts=("mri",),
    ),
    Step(
        "mri-reported",
        "Whole-spine MRI reported",
        "active",
        "in-progress",
        "active",
        ("mdt-discussed", "discharged", "cancelled"),
        completes=("mri",),
    ),
    Step(
        "mdt-discussed",
        "Discussed at the MDT",
        "active",
        "in-progress",
        "active",
        (*PLAN_STEPS, "discharged", "cancelled"),
        starts=("plan",),
        completes=("mdt",),
    ),
    _plan_step("plan-agreed-radiotherapy", "Plan agreed: radiotherapy"),
    _plan_step("plan-agreed-surgery", "Plan agreed: surgery"),
    _plan_step("plan-agreed-systemic-therapy", "Plan agreed: systemic anti-cancer therapy"),
    _plan_step("plan-agreed-best-supportive-care", "Plan agreed: best supportive care"),
    Step(
        "treatment-started",
        "Treatment started",
        "active",
        "in-progress",
        "active",
        ("completed", "discharged", "cancelled"),
    ),
    Step("completed", "Pathway completed", "completed", "finished", "completed", ()),
    Step("discharged", "Discharged from the MSCC service", "completed", "finished", "completed", ()),
    Step("cancelled", "Referral cancelled", "revoked", "cancelled", "revoked", ()),
)

STEPS: dict[str, Step] = {row.code: row for row in _ROWS}
ACTIVITIES = ("mri", "mdt", "plan")


def step(code: str) -> Step:
    """The step named ``code``; ``KeyError`` for an unknown one (callers check ``code in STEPS`` first)."""
    return STEPS[code]


def allowed(current: str) -> tuple[str, ...]:
    """The steps ``current`` may move to (none from a final step)."""
    return STEPS[current].next


def activity_status(key: str, reached: list[str]) -> str:
    """A CarePlan activity's status after the steps in ``reached`` (in order, the last is current):
    completed once a step completed it; scheduled once one started it; cancelled when the pathway
    ended without completing it; not-started otherwise."""
    status = "not-started"
    for code in reached:
        row = STEPS[code]
        if key in row.completes:
            status = "completed"
        elif key in row.starts and status == "not-started":
            status = "scheduled"
    if reached and STEPS[reached[-1]].final and status != "completed":
        return "cancelled"
    return status


def _check() -> None:
    """The table is consistent: every next step exists, and every non-final step may be cancelled."""
    for row in _ROWS:
        unknown = [n for n in row.next if n not in STEPS]
        if unknown:
            raise ValueError(f"pathway step {row.code} names unknown next steps {unknown}")
        if not row.final and "cancelled" not in row.next:
            raise ValueError(f"pathway step {row.code} cannot be cancelled")


_check()
