"""``--dry-run``: what a replay would produce, worked out locally with the hub's own code; nothing sent,
no database needed.

Each message goes through intake's own scan (``services.intake.hl7_scan``: the limits of
``shared/limits.py`` with the ``MSCC_LIMIT_*`` settings, the lean read, the length of its identifiers:
would intake refuse it, and with what reason) and then the mapper's dispatch
(``services.mapper.dispatch.make_mapper``, with the ``MSCC_MAPPING_FILE`` configuration when set),
exactly as the hub would map it once stored. FHIR lines are checked as intake checks them (limits,
parse, validation: ``services.intake.fhir_parse``) and turned into the record intake would keep
(``services.intake.fhir_accepted``) as the development client would post them, then mapped the same
way. The sender allow-list is not consulted (it is the hub's configuration, not the file's). Batches
are read message by message, as intake splits them. What the mapping needs from the database (the
stored patient to match, the version to update) is not consulted: a dry run says what a message
describes, not what would change.

The report groups messages by type: how many, how many would map, the resource types the mapping
produces (resources and the changes it derives, such as a referral's assessment Encounter and pathway
CarePlan) with their counts, what it leaves unmapped, and why any would fail.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.intake.fhir_accepted import bundle_record, created_record, prepared_create
from services.intake.fhir_ids import business_id
from services.intake.fhir_parse import checked
from services.intake.header import Rejection
from services.intake.hl7_scan import scan_frame
from services.mapper.dispatch import make_mapper
from services.mapper.hl7.config import MappingConfig
from services.mapper.model import MappingError, MappingResult
from shared.auth import DEV_SCOPES, Caller
from shared.fhir import FhirError
from shared.limits import Limits
from shared.settings import Settings
from shared.store import Document

from .files import Source
from .items import HL7V2, Item
from .readers import Reading, read_all

FHIR_JSON = "application/fhir+json"
CREATE_TYPES = ("ServiceRequest",)  # the FHIR types intake creates one by one (others travel in Bundles)


@dataclass
class TypeReport:
    """What the messages of one type would give."""

    messages: int = 0
    mapped: int = 0
    resources: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "mapped": self.mapped,
            "failed": self.messages - self.mapped,
            "resources": dict(sorted(self.resources.items())),
            "unmapped": dict(self.unmapped.most_common()),
            "failures": dict(self.failures.most_common()),
        }


@dataclass
class DryRun:
    """The dry run of a set of files; ``run`` fills ``by_type``."""

    settings: Settings
    mapping: MappingConfig | None = None
    by_type: dict[str, TypeReport] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._map = make_mapper(self.mapping)
        self._caller = Caller(self.settings.dev_client_id, self.settings.dev_client_ods, DEV_SCOPES)
        self._limits = Limits.from_settings(self.settings)  # the limits intake refuses by (shared/limits.py)

    @property
    def failed(self) -> int:
        return sum(r.messages - r.mapped for r in self.by_type.values())

    def run(self, sources: list[Source]) -> DryRun:
        for item in read_all(sources, True, Reading()):
            report = self.by_type.setdefault(item.messages[0].message_type, TypeReport())
            report.messages += 1
            try:
                result = self._result(item)
            except _WouldFail as exc:
                report.failures[str(exc)] += 1
                continue
            report.mapped += 1
            report.resources.update(r.get("resourceType", "?") for r in result.resources)
            report.resources.update(p.resource_type for p in result.patches)
            report.unmapped.update(result.unmapped)
        return self

    def _result(self, item: Item) -> MappingResult:
        if item.problem:
            raise _WouldFail(f"not sendable: {item.problem}")
        size, limit = len(item.data), self._limits.message_bytes
        if size > limit:  # intake refuses it as it reads (MLLP and HTTP alike), before any parse
            answer = "AR" if item.kind == HL7V2 else "HTTP 413"
            raise _WouldFail(
                f"intake refuses it ({answer}): message of {size} bytes exceeds the limit of {limit} bytes "
                "(MSCC_MLLP_MAX_MESSAGE_BYTES)"
            )
        record = self._hl7_record(item) if item.kind == HL7V2 else self._fhir_record(item)
        try:
            return self._map(record)
        except MappingError as exc:
            issues = "; ".join(str(i.get("diagnostics", "")) for i in exc.issues)
            raise _WouldFail(f"mapping fails: {issues}") from exc
        except Exception as exc:  # the worker fails such a message alone, and so does the dry run
            raise _WouldFail(f"mapping fails: {type(exc).__name__}: {exc}") from exc

    def _hl7_record(self, item: Item) -> Document:
        charsets = (self.settings.hl7_default_charset, self.settings.hl7_fallback_charset, None)
        # Intake's own scan: the frame's limits, the lean read, the estimates, the identifiers' length.
        scan = scan_frame(item.data, charsets, self._limits)
        try:
            if scan.refusal is not None:
                raise scan.refusal.rejection()
            read = scan.messages[0].accepted()
        except Rejection as exc:
            where = f" at {exc.location}" if exc.location else ""
            raise _WouldFail(f"intake refuses it ({exc.ack}, code {exc.code}{where}): {exc.reason}") from exc
        return {"protocol": "hl7v2", "text": read.text, "header": read.header.to_doc()}

    def _fhir_record(self, item: Item) -> Document:
        kind = item.messages[0].message_type
        now = datetime.now(UTC)
        record_id = uuid.uuid4().hex
        service = self.settings.receiving_facility
        try:
            if kind == "Bundle":
                data = checked(item.data, FHIR_JSON, "Bundle", self._limits)
                return bundle_record(
                    data,
                    item.data,
                    self._caller,
                    "dry-run",
                    record_id,
                    now,
                    self.settings.base_url,
                    service_ods=service,
                )
            if kind not in CREATE_TYPES:
                raise _WouldFail(f"the hub creates only {', '.join(CREATE_TYPES)} at /fhir/{{type}}; send a Bundle")
            data, warnings = prepared_create(checked(item.data, FHIR_JSON, kind, self._limits))
            rid = business_id(kind, data, self._caller.ods_code) or str(uuid.uuid4())
            record, _ = created_record(
                item.data, self._caller, "dry-run", record_id, now, kind, rid, data, warnings, service_ods=service
            )
            return record
        except FhirError as exc:
            raise _WouldFail(f"intake refuses it (HTTP {exc.status}): {exc}") from exc

    def text(self) -> str:
        total = sum(r.messages for r in self.by_type.values())
        lines = [f"dry run: {total} messages read, {total - self.failed} would map, {self.failed} would fail"]
        lines.append("nothing was sent; what the mapping would produce, by message type:")
        for name, report in sorted(self.by_type.items()):
            lines.append("")
            lines.append(f"{name}: {report.messages} messages, {report.mapped} would map")
            if report.resources:
                lines.append("  produces:  " + ", ".join(f"{k} {v}" for k, v in sorted(report.resources.items())))
            if report.unmapped:
                lines.append("  unmapped:  " + ", ".join(f"{k} {v}" for k, v in report.unmapped.most_common(12)))
            for reason, count in report.failures.most_common():
                lines.append(f"  fails ({count}): {reason}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        total = sum(r.messages for r in self.by_type.values())
        return {
            "dry_run": True,
            "messages": total,
            "mapped": total - self.failed,
            "failed": self.failed,
            "by_message_type": {k: v.to_json() for k, v in sorted(self.by_type.items())},
        }


class _WouldFail(Exception):
    """This message would not be mapped; the text says why."""
