"""The traffic: each trust's engine sends REF^I12 referrals, ADT^A01 admissions and ADT^A08 updates of
the patients it admitted, built by ``bench/mllp_ingest.py`` and made each trust's own.

Every trust numbers its patients and referrals from the same counters, so the same local hospital number
(``H000123``) and referral number (``R000045``) name a different patient and referral at each trust: the
hub must keep them apart (identifiers scoped by the trust that assigned them). Every message has its own
MSH-10; a resend is the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from mllp_ingest import _SENDERS, hl7_message

TRUSTS: tuple[tuple[str, str], ...] = tuple(_SENDERS)  # (sending application, ODS code)


@dataclass(frozen=True)
class Outgoing:
    """One message as its engine sends it (and resends it): its key is (MSH-4, MSH-10)."""

    facility: str
    control_id: str
    kind: str  # "REF^I12", "ADT^A01", "ADT^A08"
    data: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.facility, self.control_id)


@dataclass
class TrustStream:
    """The messages of one trust, in the order its engine sends them: a referral, an admission, an update
    of that admission, and again. ``patients`` and ``referrals`` count on across scenarios."""

    trust: int
    patients: int = 0
    referrals: int = 0
    admitted: list[int] = field(default_factory=list)  # builder indexes of admitted patients
    sent: int = 0

    def next(self, prefix: str) -> Outgoing:
        ods = TRUSTS[self.trust][1]
        control_id = f"{prefix}{ods}{self.sent:06d}"
        step = self.sent % 3
        self.sent += 1
        now = datetime.now(UTC)
        if step == 1 or (step == 2 and not self.admitted):
            index = 2 * (self.patients * len(TRUSTS) + self.trust)  # even: the builder's ADT^A01
            local = f"H{self.patients:06d}"
            self.patients += 1
            self.admitted.append(index)
            return Outgoing(ods, control_id, "ADT^A01", self._own(hl7_message(index, control_id, now), index, local))
        if step == 2:
            index = self.admitted[-1]
            local = f"H{self.patients - 1:06d}"
            data = self._own(hl7_message(index, control_id, now), index, local)
            data = data.replace(b"|ADT^A01^ADT_A01|", b"|ADT^A08^ADT_A01|", 1).replace(b"\rEVN|A01|", b"\rEVN|A08|", 1)
            return Outgoing(ods, control_id, "ADT^A08", data)
        index = 2 * (self.patients * len(TRUSTS) + self.trust) + 1  # odd: the builder's REF^I12
        local = f"H{self.patients:06d}"
        self.patients += 1
        referral = f"R{self.referrals:06d}"
        self.referrals += 1
        data = self._own(hl7_message(index, control_id, now), index, local)
        data = data.replace(f"R{index:09d}".encode(), referral.encode())
        return Outgoing(ods, control_id, "REF^I12", data)

    def _own(self, data: bytes, index: int, local: str) -> bytes:
        """The builder's message as this trust's: its MSH-3/4, its authority on every identifier, and the
        hospital number from the trust's own counter (which other trusts use too)."""
        app, ods = TRUSTS[self.trust]
        b_app, b_ods = TRUSTS[index % len(TRUSTS)]
        data = data.replace(f"{b_ods}{index:08d}".encode(), local.encode())
        data = data.replace(f"|{b_app}|{b_ods}|MSCC-HUB|".encode(), f"|{app}|{ods}|MSCC-HUB|".encode(), 1)
        return data.replace(f"^{b_ods}^".encode(), f"^{ods}^".encode())
