"""Find the patient of a consult among those the user's site may see: by name, phone, CCCD or BHYT number."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from his import audit
from his.errors import N_, ValidationFailed
from his.identifiers import NATIONAL_ID_SYSTEM
from his.models import PatientSiteAccess
from his.policy import may_access_patient
from his.security import Principal

INSURANCE_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"
MAX_RESULTS = 20
MIN_QUERY = 2
MAX_QUERY = 100
_NUMBER = re.compile(r"^[A-Za-z]{0,3}[0-9][0-9 .-]*$")


@dataclass(frozen=True)
class PatientMatch:
    """One patient found: what tells patients apart at the desk."""

    id: str
    full_name: str
    birth_date: str | None
    sex: str | None
    phone: str | None
    national_id: str | None
    insurance_number: str | None


def find_patients(session: Session, principal: Principal, query: str) -> list[PatientMatch]:
    """Return the patients the principal's site may see whose name, phone, CCCD or BHYT number matches.

    A number is looked up as a phone, a CCCD and a BHYT card number; words as a name
    (every word must appear). The search is audited. Raises ValidationFailed (field
    ``q``) for a query too short or too long.
    """
    from fhir import services as fhir_store

    text = " ".join(query.split())
    if len(text) < MIN_QUERY or len(text) > MAX_QUERY:
        raise ValidationFailed(
            fields={"q": N_("Type at least 2 and at most 100 characters of a name or number.")}
        )
    if principal.site_id is None:
        return []
    visible = select(PatientSiteAccess.patient_id).where(PatientSiteAccess.site_id == principal.site_id)
    searches: list[list[tuple[str, str]]]
    if _NUMBER.match(text):
        number = re.sub(r"[ .-]", "", text)
        searches = [
            [("phone", number)],
            [("identifier", f"{NATIONAL_ID_SYSTEM}|{number}")],
            [("identifier", f"{INSURANCE_SYSTEM}|{number.upper()}")],
        ]
    else:
        searches = [[("name", word) for word in text.split(" ")]]
    found: dict[str, PatientMatch] = {}
    for params in searches:
        result = fhir_store.search(
            session, "Patient", [*params, ("_count", str(MAX_RESULTS))], visible_patients=visible
        )
        for stored in result.matches:
            if stored.id not in found and may_access_patient(principal, stored.id, "read"):
                found[stored.id] = _match(stored.id, stored.resource)
    matches = sorted(found.values(), key=lambda match: (match.full_name, match.id))[:MAX_RESULTS]
    audit.record("search", "Patient", None, detail=f"pathology consult: {len(matches)} patients")
    return matches


def _match(patient_id: str, resource: dict[str, object]) -> PatientMatch:
    names = resource.get("name") or [{}]
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], dict) else {}
    given = name.get("given") or []
    full_name = str(name.get("text") or " ".join([str(name.get("family", "")), *map(str, given)]).strip())
    identifiers = {
        str(item.get("system")): str(item.get("value"))
        for item in (resource.get("identifier") or [])  # type: ignore[attr-defined]
        if isinstance(item, dict)
    }
    phone = next(
        (
            str(item.get("value"))
            for item in (resource.get("telecom") or [])  # type: ignore[attr-defined]
            if isinstance(item, dict) and item.get("system") == "phone"
        ),
        None,
    )
    birth_date = resource.get("birthDate")
    sex = resource.get("gender")
    return PatientMatch(
        id=patient_id,
        full_name=full_name,
        birth_date=str(birth_date) if birth_date else None,
        sex=str(sex) if sex else None,
        phone=phone,
        national_id=identifiers.get(NATIONAL_ID_SYSTEM),
        insurance_number=identifiers.get(INSURANCE_SYSTEM),
    )
