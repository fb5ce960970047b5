"""Which trust an inbound message speaks for, and whether its caller may send it in that trust's name.

HL7v2: a message is the trust's its MSH-4 names (or the sender configuration's ``ods_code`` for that
MSH-4: ``policy.SenderPolicy.trust_of``). Over HTTP the caller is authenticated, so a trust's client may
send only its own messages: MSH-4 (or its configured alias) must be the caller's ODS code, else the
message is refused (AR, kept with the reason). The MSCC team's clients may send any trust's messages
(the hub's operators relay and resend what trusts sent them); such a message is still the trust's its
MSH-4 names. Over MLLP the connection, not a client, is known: the message is the trust's MSH-4 names.

FHIR: a trust creates referrals only in its own name. The requester of every ServiceRequest it posts
(an Organization reference or identifier with an ODS code, or a contained or Bundle PractitionerRole's
organisation) must be the caller's ODS code, else 403. A referral that names no requesting
organisation is taken as the caller's. The MSCC team's clients may post a referral on a trust's behalf
(a referral taken by phone): it is then visible to the trust its requester names.

The trusts a record speaks for are kept on it (``trusts``): the mapper makes what it writes from the
record visible to them (``shared/visibility.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.nhs import looks_like_ods_code
from shared.search import ODS_SYSTEM
from shared.visibility import is_mscc_team, trust_code

from .header import APPLICATION_INTERNAL_ERROR, MessageHeader, Rejection
from .policy import SenderPolicy


def hl7_trust(policy: SenderPolicy, header: MessageHeader, caller: Caller, channel: str, service_ods: str) -> str:
    """The ODS code of the trust an HL7v2 message speaks for ("" when MSH-4 is empty); ``Rejection``
    (AR) when a trust's client sends over HTTP a message that is not its own."""
    trust = policy.trust_of(header)
    if channel != "http" or is_mscc_team(caller, service_ods) or trust == trust_code(caller.ods_code):
        return trust
    said = f"MSH-4 {header.sending_facility!r}" + (
        f" (configured as {trust})" if trust != header.sending_facility else ""
    )
    raise Rejection(
        APPLICATION_INTERNAL_ERROR,
        f"{said} is not the organisation of the authenticated client ({caller.ods_code}): a trust sends "
        f"only its own messages; send it with MSH-4 {caller.ods_code}, or ask the MSCC team to add MSH-4 "
        "to the sender configuration (MSCC_SENDERS_FILE, ods_code)",
        location="MSH-4",
    )


def _ods_of(organization: Any) -> str | None:
    """The ODS code an Organization reference (or Organization resource) names: an ODS identifier, or a
    literal ``Organization/<ODS code>``; None when it names none."""
    if not isinstance(organization, dict):
        return None
    identifiers = organization.get("identifier")
    for ident in identifiers if isinstance(identifiers, list) else [identifiers]:
        if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return trust_code(str(ident["value"]))
    reference = organization.get("reference")
    if isinstance(reference, str) and reference.startswith("Organization/"):
        code = reference.removeprefix("Organization/")
        return trust_code(code) if looks_like_ods_code(code) else None
    return None


def _resolve(reference: Any, referral: Resource, entries: dict[str, Resource]) -> Resource | None:
    """The resource a reference points at inside the referral (``#id``) or its Bundle (a ``fullUrl``)."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        contained = referral.get("contained") or []
        return next((c for c in contained if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    return entries.get(ref)


def requester_codes(referral: Resource, entries: dict[str, Resource] | None = None) -> set[str]:
    """The ODS codes a ServiceRequest's requester names: directly, or through a contained (or Bundle)
    Organization or PractitionerRole. Empty when it names no organisation."""
    requester = referral.get("requester")
    found: set[str] = set()
    direct = _ods_of(requester)
    if direct:
        found.add(direct)
    target = _resolve(requester, referral, entries or {})
    if isinstance(target, dict):
        if target.get("resourceType") == "Organization":
            found |= {c for c in [_ods_of(target)] if c}
        elif target.get("resourceType") == "PractitionerRole":
            organization = target.get("organization")
            code = _ods_of(organization) or _ods_of(_resolve(organization, referral, entries or {}))
            found |= {code} if code else set()
    return found


def _referrals(bundle: Resource) -> Iterator[tuple[int, Resource, dict[str, Resource]]]:
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    by_url = {
        str(e["fullUrl"]): e["resource"] for e in entries if e.get("fullUrl") and isinstance(e.get("resource"), dict)
    }
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
            yield index, resource, by_url


def referral_trusts(data: Resource, caller: Caller, service_ods: str) -> list[str]:
    """The trusts a posted ServiceRequest or Bundle speaks for: the caller's, and for the MSCC team's
    clients the trusts its referrals' requesters name. ``FhirError`` 403 when a trust's client names
    another organisation as a requester (the OperationOutcome says which, and where)."""
    if data.get("resourceType") == "Bundle":
        found = [(f"Bundle.entry[{i}].resource.requester", requester_codes(r, urls)) for i, r, urls in _referrals(data)]
    else:
        found = [("ServiceRequest.requester", requester_codes(data))]
    own = trust_code(caller.ods_code)
    if is_mscc_team(caller, service_ods):
        return sorted({*(c for _, codes in found for c in codes), *([own] if own else [])})
    others = [(where, codes - {own}) for where, codes in found if codes - {own}]
    if others:
        named = "; ".join(f"{where} names {', '.join(sorted(codes))}" for where, codes in others)
        raise FhirError(
            403,
            "forbidden",
            f"organisation {caller.ods_code} may create referrals in its own name only: {named}. "
            f"Name {caller.ods_code} as the requesting organisation",
            expression=[where for where, _ in others],
        )
    return [own] if own else []
