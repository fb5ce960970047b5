"""Patient matching: which stored Patient a message's patient is, and whether the message may change it.

Pure functions over FHIR JSON; the writer (``writer.py``) calls them with what it read from the store.

The rule (docs/mapping.md, "Patient matching"):

- the valid NHS number links a patient across trusts: a stored Patient holding the message's NHS number
  is that patient;
- local identifiers (hospital numbers, scoped by the trust that assigned them, see ``Systems.local``)
  link only within their trust; they find the patient when the message has no NHS number the hub
  knows, or when the stored patient has none yet;
- a number that failed the NHS number check identifies nobody and is never used to match;
- the message conflicts with the matched patient, and is held for review instead of applied, when:
  the stored and the incoming valid NHS numbers differ; the birth dates differ (at the precision both
  have); the administrative sexes differ (``unknown`` and absent aside); or the name is wholly
  different (no family name in common AND no given name in common, compared without case, spaces,
  hyphens, apostrophes or accents); or its local identifiers name more than one stored patient.

Diagnostics never carry a name, a full birth date or a full NHS number: they go into logs and into
records operators list.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.nhs import NHS_NUMBER_SYSTEM, is_valid_nhs_number, redact_nhs_number

from .model import OutcomeIssue, issue

Resource = dict[str, Any]
# Systems whose values identify nobody and must never make two records one.
UNMATCHABLE_SYSTEMS = frozenset({"urn:mscc:id:invalid-nhs-number"})


@dataclass(frozen=True)
class Conflict:
    """One disagreement between a message and the stored patient; values already masked."""

    field: str
    stored: str
    incoming: str

    def diagnostics(self) -> str:
        return f"{self.field} differs from the matched patient's (stored {self.stored}, message {self.incoming})"


@dataclass(frozen=True)
class Match:
    """The stored Patient id the message's patient resolves to (None: a new patient), and why not to
    apply the message when ``conflicts`` is not empty."""

    target: str | None
    conflicts: tuple[Conflict, ...] = ()
    matched_by: str = ""

    def issues(self, incoming_id: str) -> list[OutcomeIssue]:
        where = f"Patient/{self.target or incoming_id}"
        return [issue("error", "conflict", f"{where}: {c.diagnostics()}", f"Patient.{c.field}") for c in self.conflicts]


@dataclass
class Candidates:
    """Stored patients that share an identifier with the message's patient, and the survivors of merges
    (by id) that any of them was merged into."""

    by_nhs: list[Resource] = field(default_factory=list)
    by_local: list[Resource] = field(default_factory=list)
    survivors: dict[str, Resource] = field(default_factory=dict)


# --- reading a Patient ------------------------------------------------------------------------------


def nhs_number(patient: Resource | None) -> str | None:
    """The patient's valid NHS number, if it has one."""
    for ident in (patient or {}).get("identifier") or []:
        value = str(ident.get("value") or "")
        if ident.get("system") == NHS_NUMBER_SYSTEM and is_valid_nhs_number(value):
            return value
    return None


def matching_identifiers(patient: Resource) -> list[tuple[str, str]]:
    """(system, value) of the identifiers that may link records: every identifier but failed NHS numbers."""
    out = []
    for ident in patient.get("identifier") or []:
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and value and system not in UNMATCHABLE_SYSTEMS:
            out.append((system, value))
    return out


def _fold(text: str) -> str:
    # Case, accents, spaces, hyphens and apostrophes are how the same name differs between systems.
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in plain.casefold() if c.isalnum())


def _names(patient: Resource) -> tuple[set[str], set[str]]:
    families: set[str] = set()
    givens: set[str] = set()
    for name in patient.get("name") or []:
        if name.get("family"):
            families.add(_fold(str(name["family"])))
        for given in name.get("given") or []:
            givens.add(_fold(str(given)))
    return families - {""}, givens - {""}


# --- masking --------------------------------------------------------------------------------------


def _mask_date(value: str) -> str:
    # The year alone: enough for an operator to see "1970 against 1940", not enough to identify.
    return f"{value[:4]}-**-**" if len(value) > 4 else value


def _mask_names(values: Iterable[str]) -> str:
    return "/".join(sorted(f"{v[:1].upper()}{'*' * max(len(v) - 1, 0)}" for v in values)) or "-"


# --- the rule -----------------------------------------------------------------------------------------


def _dates_differ(stored: str, incoming: str) -> bool:
    # "1970" and "1970-03-02" agree: compare at the precision both have.
    size = min(len(stored), len(incoming))
    return stored[:size] != incoming[:size]


def conflicts(stored: Resource, incoming: Resource) -> list[Conflict]:
    """How ``incoming`` contradicts ``stored`` (empty: it may be applied). Absent values never conflict."""
    found: list[Conflict] = []
    old_nhs, new_nhs = nhs_number(stored), nhs_number(incoming)
    if old_nhs and new_nhs and old_nhs != new_nhs:
        found.append(Conflict("identifier", f"NHS number {redact_nhs_number(old_nhs)}", redact_nhs_number(new_nhs)))
    old_birth, new_birth = str(stored.get("birthDate") or ""), str(incoming.get("birthDate") or "")
    if old_birth and new_birth and _dates_differ(old_birth, new_birth):
        found.append(Conflict("birthDate", _mask_date(old_birth), _mask_date(new_birth)))
    old_sex, new_sex = stored.get("gender"), incoming.get("gender")
    if old_sex and new_sex and "unknown" not in (old_sex, new_sex) and old_sex != new_sex:
        found.append(Conflict("gender", str(old_sex), str(new_sex)))
    (old_family, old_given), (new_family, new_given) = _names(stored), _names(incoming)
    comparable = old_family and new_family and old_given and new_given
    if comparable and not (old_family & new_family) and not (old_given & new_given):
        masked_old = f"{_mask_names(old_family)}, {_mask_names(old_given)}"
        masked_new = f"{_mask_names(new_family)}, {_mask_names(new_given)}"
        found.append(Conflict("name", masked_old, masked_new))
    return found


def _active(candidates: list[Resource]) -> list[Resource]:
    # A patient merged away (active false, replaced-by) is not a match when a live record also is.
    live = [c for c in candidates if c.get("active") is not False]
    return live or candidates


def replaced_by(patient: Resource) -> str | None:
    """The id of the Patient this one was merged into (ADT^A40: inactive, link ``replaced-by``)."""
    if patient.get("active") is not False:
        return None
    for link in patient.get("link") or []:
        reference = str((link.get("other") or {}).get("reference") or "")
        if link.get("type") == "replaced-by" and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return None


def _survivor(patient: Resource, survivors: dict[str, Resource]) -> Resource:
    # A message naming a merged-away patient (a system that missed the merge still sends the old
    # hospital number) belongs to the survivor. A few hops at most: merges of merges.
    for _ in range(5):
        nxt = replaced_by(patient)
        if nxt is None or nxt not in survivors:
            return patient
        patient = survivors[nxt]
    return patient


def _unique(resources: Iterable[Resource]) -> list[Resource]:
    seen: dict[str, Resource] = {}
    for resource in resources:
        seen.setdefault(str(resource["id"]), resource)
    return list(seen.values())


def resolve(incoming: Resource, candidates: Candidates) -> Match:
    """The stored patient ``incoming`` is, by the rule above, with any conflict that stops the message.

    ``candidates.by_nhs``: stored Patients holding the message's valid NHS number; ``by_local``: those
    sharing one of its other identifiers. Never raises.
    """
    new_nhs = nhs_number(incoming)
    by_nhs = _unique(candidates.by_nhs)
    by_local = [c for c in _unique(candidates.by_local) if c["id"] not in {n["id"] for n in by_nhs}]
    if new_nhs and by_nhs:
        target = _survivor(_active(by_nhs)[0], candidates.survivors)
        found = conflicts(target, incoming)
        # A hospital number that belongs to a patient with another NHS number: a mistyped number, a
        # reused hospital number, or two people. Not for the hub to decide.
        for other in by_local:
            other_nhs = nhs_number(other)
            if other_nhs and other_nhs != new_nhs:
                found.append(
                    Conflict(
                        "identifier",
                        f"local identifier held by a patient with NHS number {redact_nhs_number(other_nhs)}",
                        redact_nhs_number(new_nhs),
                    )
                )
        return Match(str(target["id"]), tuple(found), "nhs-number")
    if not by_local:
        return Match(None)
    live = _active(by_local)
    if len(live) > 1:
        # Prefer the one record that carries an NHS number (an earlier message linked it); several
        # equally good records mean the hub cannot tell which person this is.
        with_nhs = [c for c in live if nhs_number(c)]
        if len(with_nhs) != 1:
            count = str(len(live))
            return Match(str(live[0]["id"]), (Conflict("identifier", f"{count} patients", "one local identifier"),))
        live = with_nhs
    target = _survivor(live[0], candidates.survivors)
    return Match(str(target["id"]), tuple(conflicts(target, incoming)), "local-identifier")


# --- merging an update into the stored patient ------------------------------------------------------

# Lists a message may leave out without meaning "none any more": a sparse message (an ORU's PID with
# the hospital number only) keeps what the stored patient has.
KEPT_WHEN_ABSENT = ("telecom", "address", "generalPractitioner", "contact", "communication", "link")
# Choice elements: a message carrying one form replaces the stored one of any form.
_CHOICES = ("deceased", "multipleBirth")


def _identifier_key(ident: Resource) -> tuple[str, str]:
    return str(ident.get("system")), str(ident.get("value"))


def merge_patient(stored: Resource | None, incoming: Resource) -> Resource:
    """``incoming`` as the new content of ``stored``: identifiers unioned (the message's first, NHS
    number first of all, none dropped); every element the message leaves out kept as stored; name,
    birthDate, gender and whatever else the message carries, the message's. Returns a new dict."""
    if not stored:
        return incoming
    out: Resource = dict(incoming)
    new_ids = list(incoming.get("identifier") or [])
    known = {_identifier_key(i) for i in new_ids}
    # A stored NHS number is never dropped by a message without one; one with another NHS number only
    # gets here when an operator applied it after review, and then the message's number is the truth.
    replaced = {NHS_NUMBER_SYSTEM} if nhs_number(incoming) else set()
    kept = [
        i for i in stored.get("identifier") or [] if _identifier_key(i) not in known and i.get("system") not in replaced
    ]
    identifiers = new_ids + kept
    if identifiers:
        out["identifier"] = sorted(identifiers, key=lambda i: i.get("system") != NHS_NUMBER_SYSTEM)
    old_birth, new_birth = str(stored.get("birthDate") or ""), str(incoming.get("birthDate") or "")
    if new_birth and len(new_birth) < len(old_birth) and old_birth.startswith(new_birth):
        out["birthDate"] = old_birth  # "1970" says less than the stored "1970-03-12", not something else
    carried = {k for k in incoming if k.startswith(_CHOICES)}
    for key, value in stored.items():
        if key in out or key in ("id", "meta", "text"):
            continue
        if any(key.startswith(c) and any(k.startswith(c) for k in carried) for c in _CHOICES):
            continue
        out[key] = value
    return out
