"""Declare the search parameters the store indexes and extract their values from JSON.

Everything here is data and pure functions: no session, no request. A parameter's
``paths`` use a small dotted notation over the resource JSON:

- ``name.family`` walks objects and flattens lists;
- ``effective[x]`` matches every choice element (``effectiveDateTime``, ``effectivePeriod``);
- ``telecom(system=phone)`` keeps only list items whose ``system`` is ``phone``.

Reference parameters may restrict their targets (``patient`` keeps only ``Patient/…``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

KINDS = ("string", "token", "date", "number", "quantity", "reference", "uri")
MIN_DATE = datetime(1, 1, 1)
MAX_DATE = datetime(9999, 12, 31, 23, 59, 59, 999999)
STRING_LEN = 255
TOKEN_LEN = 255


@dataclass(frozen=True)
class SearchParam:
    """Describe one search parameter: its name, kind, where it reads, what it targets."""

    name: str
    kind: str
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    description: str = ""


def _p(name: str, kind: str, *paths: str, targets: tuple[str, ...] = ()) -> SearchParam:
    return SearchParam(name, kind, paths, targets)


def _subject_params(patient_path: str = "subject") -> list[SearchParam]:
    return [
        _p("patient", "reference", patient_path, targets=("Patient",)),
        _p("subject", "reference", patient_path),
    ]


COMMON: tuple[SearchParam, ...] = (
    _p("_tag", "token", "meta.tag"),
    _p("_security", "token", "meta.security"),
    _p("_profile", "uri", "meta.profile"),
)
"""Parameters every resource type has; ``_id`` and ``_lastUpdated`` are handled by the store."""

_ID = _p("identifier", "token", "identifier")
_STATUS = _p("status", "token", "status")
_ENCOUNTER = _p("encounter", "reference", "encounter", targets=("Encounter",))
_CODE = _p("code", "token", "code")
_CATEGORY = _p("category", "token", "category")

_NAME_PARAMS = [
    _p("name", "string", "name"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("phone", "token", "telecom(system=phone).value"),
    _p("email", "token", "telecom(system=email).value"),
    _p("telecom", "token", "telecom.value"),
    _p("address", "string", "address"),
    _p("address-city", "string", "address.city"),
    _p("gender", "token", "gender"),
    _p("active", "token", "active"),
    _ID,
]

RESOURCE_PARAMS: dict[str, list[SearchParam]] = {
    "Patient": [
        *_NAME_PARAMS,
        _p("birthdate", "date", "birthDate"),
        _p("general-practitioner", "reference", "generalPractitioner"),
        _p("organization", "reference", "managingOrganization", targets=("Organization",)),
        _p("deceased", "token", "deceasedBoolean"),
        _p("link", "reference", "link.other"),
    ],
    "Practitioner": [*_NAME_PARAMS],
    "RelatedPerson": [*_NAME_PARAMS, _p("patient", "reference", "patient", targets=("Patient",))],
    "Person": [*_NAME_PARAMS, _p("patient", "reference", "link.target", targets=("Patient",))],
    "PractitionerRole": [
        _ID,
        _p("active", "token", "active"),
        _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
        _p("organization", "reference", "organization", targets=("Organization",)),
        _p("role", "token", "code"),
        _p("specialty", "token", "specialty"),
        _p("location", "reference", "location", targets=("Location",)),
        _p("service", "reference", "healthcareService", targets=("HealthcareService",)),
    ],
    "Organization": [
        _ID,
        _p("name", "string", "name", "alias"),
        _p("type", "token", "type"),
        _p("active", "token", "active"),
        _p("address", "string", "address"),
        _p("address-city", "string", "address.city"),
        _p("partof", "reference", "partOf", targets=("Organization",)),
    ],
    "Location": [
        _ID,
        _p("name", "string", "name", "alias"),
        _p("type", "token", "type"),
        _STATUS,
        _p("address", "string", "address"),
        _p("address-city", "string", "address.city"),
        _p("organization", "reference", "managingOrganization", targets=("Organization",)),
        _p("partof", "reference", "partOf", targets=("Location",)),
    ],
    "HealthcareService": [
        _ID,
        _p("name", "string", "name"),
        _p("active", "token", "active"),
        _p("service-type", "token", "type"),
        _p("organization", "reference", "providedBy", targets=("Organization",)),
        _p("location", "reference", "location", targets=("Location",)),
    ],
    "Encounter": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("date", "date", "period"),
        _p("class", "token", "class"),
        _p("type", "token", "type"),
        _p("service-provider", "reference", "serviceProvider", targets=("Organization",)),
        _p("participant", "reference", "participant.individual"),
        _p("practitioner", "reference", "participant.individual", targets=("Practitioner",)),
        _p("location", "reference", "location.location", targets=("Location",)),
        _p("reason-code", "token", "reasonCode"),
        _p("appointment", "reference", "appointment", targets=("Appointment",)),
        _p("part-of", "reference", "partOf", targets=("Encounter",)),
    ],
    "Observation": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CODE,
        _CATEGORY,
        _ENCOUNTER,
        _p("date", "date", "effective[x]"),
        _p("value-quantity", "quantity", "valueQuantity"),
        _p("value-concept", "token", "valueCodeableConcept"),
        _p("value-string", "string", "valueString"),
        _p("value-date", "date", "valueDateTime", "valuePeriod"),
        _p("component-code", "token", "component.code"),
        _p("component-value-quantity", "quantity", "component.valueQuantity"),
        _p("performer", "reference", "performer"),
        _p("based-on", "reference", "basedOn"),
        _p("has-member", "reference", "hasMember"),
        _p("derived-from", "reference", "derivedFrom"),
        _p("specimen", "reference", "specimen", targets=("Specimen",)),
    ],
    "Condition": [
        *_subject_params(),
        _ID,
        _CODE,
        _CATEGORY,
        _ENCOUNTER,
        _p("clinical-status", "token", "clinicalStatus"),
        _p("verification-status", "token", "verificationStatus"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("abatement-date", "date", "abatementDateTime", "abatementPeriod"),
        _p("recorded-date", "date", "recordedDate"),
        _p("asserter", "reference", "asserter"),
        _p("severity", "token", "severity"),
    ],
    "Procedure": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CODE,
        _CATEGORY,
        _ENCOUNTER,
        _p("date", "date", "performed[x]"),
        _p("performer", "reference", "performer.actor"),
        _p("based-on", "reference", "basedOn"),
        _p("reason-code", "token", "reasonCode"),
    ],
    "MedicationRequest": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CATEGORY,
        _ENCOUNTER,
        _p("code", "token", "medicationCodeableConcept"),
        _p("medication", "reference", "medicationReference", targets=("Medication",)),
        _p("intent", "token", "intent"),
        _p("authoredon", "date", "authoredOn"),
        _p("requester", "reference", "requester"),
        _p("intended-performer", "reference", "performer"),
    ],
    "MedicationDispense": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("code", "token", "medicationCodeableConcept"),
        _p("medication", "reference", "medicationReference", targets=("Medication",)),
        _p("performer", "reference", "performer.actor"),
        _p("prescription", "reference", "authorizingPrescription", targets=("MedicationRequest",)),
        _p("whenhandedover", "date", "whenHandedOver"),
        _p("whenprepared", "date", "whenPrepared"),
        _p("context", "reference", "context", targets=("Encounter", "EpisodeOfCare")),
    ],
    "MedicationAdministration": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("code", "token", "medicationCodeableConcept"),
        _p("medication", "reference", "medicationReference", targets=("Medication",)),
        _p("effective-time", "date", "effective[x]"),
        _p("context", "reference", "context", targets=("Encounter", "EpisodeOfCare")),
        _p("request", "reference", "request", targets=("MedicationRequest",)),
    ],
    "MedicationStatement": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("code", "token", "medicationCodeableConcept"),
        _p("effective", "date", "effective[x]"),
    ],
    "Medication": [_ID, _CODE, _STATUS],
    "AllergyIntolerance": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _CODE,
        _p("clinical-status", "token", "clinicalStatus"),
        _p("verification-status", "token", "verificationStatus"),
        _p("category", "token", "category"),
        _p("criticality", "token", "criticality"),
        _p("type", "token", "type"),
        _p("date", "date", "recordedDate"),
        _p("recorder", "reference", "recorder"),
        _p("asserter", "reference", "asserter"),
    ],
    "DiagnosticReport": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CODE,
        _CATEGORY,
        _ENCOUNTER,
        _p("date", "date", "effective[x]"),
        _p("issued", "date", "issued"),
        _p("result", "reference", "result", targets=("Observation",)),
        _p("performer", "reference", "performer"),
        _p("based-on", "reference", "basedOn"),
        _p("specimen", "reference", "specimen", targets=("Specimen",)),
    ],
    "ImagingStudy": [
        *_subject_params(),
        _ID,
        _STATUS,
        _ENCOUNTER,
        _p("started", "date", "started"),
        _p("modality", "token", "series.modality"),
        _p("basedon", "reference", "basedOn"),
        _p("referrer", "reference", "referrer"),
        _p("endpoint", "reference", "endpoint", targets=("Endpoint",)),
    ],
    "Immunization": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("vaccine-code", "token", "vaccineCode"),
        _p("date", "date", "occurrence[x]"),
        _p("location", "reference", "location", targets=("Location",)),
        _p("performer", "reference", "performer.actor"),
    ],
    "DocumentReference": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CATEGORY,
        _p("type", "token", "type"),
        _p("date", "date", "date"),
        _p("period", "date", "context.period"),
        _p("encounter", "reference", "context.encounter", targets=("Encounter",)),
        _p("author", "reference", "author"),
        _p("custodian", "reference", "custodian", targets=("Organization",)),
    ],
    "Composition": [
        *_subject_params(),
        _ID,
        _STATUS,
        _ENCOUNTER,
        _p("type", "token", "type"),
        _p("date", "date", "date"),
        _p("author", "reference", "author"),
    ],
    "ServiceRequest": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CODE,
        _CATEGORY,
        _ENCOUNTER,
        _p("intent", "token", "intent"),
        _p("authored", "date", "authoredOn"),
        _p("occurrence", "date", "occurrence[x]"),
        _p("requester", "reference", "requester"),
        _p("performer", "reference", "performer"),
        _p("based-on", "reference", "basedOn"),
        _p("specimen", "reference", "specimen", targets=("Specimen",)),
    ],
    "Specimen": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("type", "token", "type"),
        _p("collected", "date", "collection.collected[x]"),
        _p("accession", "token", "accessionIdentifier"),
    ],
    "Appointment": [
        _p("patient", "reference", "participant.actor", targets=("Patient",)),
        _p("actor", "reference", "participant.actor"),
        _p("practitioner", "reference", "participant.actor", targets=("Practitioner",)),
        _p("location", "reference", "participant.actor", targets=("Location",)),
        _ID,
        _STATUS,
        _p("date", "date", "start"),
        _p("service-type", "token", "serviceType"),
        _p("slot", "reference", "slot", targets=("Slot",)),
        _p("appointment-type", "token", "appointmentType"),
    ],
    "Slot": [
        _ID,
        _p("schedule", "reference", "schedule", targets=("Schedule",)),
        _p("start", "date", "start"),
        _p("status", "token", "status"),
        _p("service-type", "token", "serviceType"),
    ],
    "Schedule": [
        _ID,
        _p("actor", "reference", "actor"),
        _p("active", "token", "active"),
        _p("date", "date", "planningHorizon"),
        _p("service-type", "token", "serviceType"),
    ],
    "Coverage": [
        _p("patient", "reference", "beneficiary", targets=("Patient",)),
        _p("beneficiary", "reference", "beneficiary", targets=("Patient",)),
        _p("subscriber", "reference", "subscriber"),
        _p("policy-holder", "reference", "policyHolder"),
        _p("payor", "reference", "payor"),
        _ID,
        _STATUS,
        _p("type", "token", "type"),
    ],
    "ChargeItem": [
        *_subject_params(),
        _ID,
        _CODE,
        _p("context", "reference", "context", targets=("Encounter", "EpisodeOfCare")),
        _p("occurrence", "date", "occurrence[x]"),
        _p("entered-date", "date", "enteredDate"),
        _p("account", "reference", "account", targets=("Account",)),
        _p("performer-actor", "reference", "performer.actor"),
        _p("quantity", "quantity", "quantity"),
    ],
    "Invoice": [
        *_subject_params(),
        _ID,
        _STATUS,
        _p("date", "date", "date"),
        _p("issuer", "reference", "issuer"),
        _p("recipient", "reference", "recipient"),
        _p("account", "reference", "account", targets=("Account",)),
        _p("totalnet", "quantity", "totalNet"),
        _p("totalgross", "quantity", "totalGross"),
    ],
    "Claim": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("created", "date", "created"),
        _p("provider", "reference", "provider"),
        _p("insurer", "reference", "insurer", targets=("Organization",)),
        _p("use", "token", "use"),
        _p("priority", "token", "priority"),
        _p("encounter", "reference", "item.encounter", targets=("Encounter",)),
    ],
    "ExplanationOfBenefit": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("created", "date", "created"),
        _p("provider", "reference", "provider"),
        _p("claim", "reference", "claim", targets=("Claim",)),
        _p("coverage", "reference", "insurance.coverage", targets=("Coverage",)),
        _p("encounter", "reference", "item.encounter", targets=("Encounter",)),
    ],
    "CarePlan": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CATEGORY,
        _ENCOUNTER,
        _p("date", "date", "period"),
        _p("intent", "token", "intent"),
        _p("care-team", "reference", "careTeam", targets=("CareTeam",)),
    ],
    "CareTeam": [
        *_subject_params(),
        _ID,
        _STATUS,
        _CATEGORY,
        _ENCOUNTER,
        _p("date", "date", "period"),
        _p("participant", "reference", "participant.member"),
    ],
    "Device": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("type", "token", "type"),
        _p("organization", "reference", "owner", targets=("Organization",)),
    ],
    "SupplyDelivery": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("supplier", "reference", "supplier"),
        _p("receiver", "reference", "receiver"),
    ],
    "QuestionnaireResponse": [
        *_subject_params(),
        _ID,
        _STATUS,
        _ENCOUNTER,
        _p("questionnaire", "reference", "questionnaire"),
        _p("authored", "date", "authored"),
        _p("author", "reference", "author"),
        _p("source", "reference", "source"),
    ],
    "Questionnaire": [
        _ID,
        _STATUS,
        _p("url", "uri", "url"),
        _p("name", "string", "name"),
        _p("title", "string", "title"),
        _p("version", "token", "version"),
        _p("code", "token", "item.code"),
    ],
    "AuditEvent": [
        _p("patient", "reference", "entity.what", targets=("Patient",)),
        _p("date", "date", "recorded"),
        _p("type", "token", "type"),
        _p("subtype", "token", "subtype"),
        _p("action", "token", "action"),
        _p("outcome", "token", "outcome"),
        _p("agent", "reference", "agent.who"),
        _p("entity", "reference", "entity.what"),
        _p("source", "reference", "source.observer"),
        _p("site", "token", "source.site"),
    ],
    "Provenance": [
        _p("patient", "reference", "target", targets=("Patient",)),
        _p("target", "reference", "target"),
        _p("agent", "reference", "agent.who"),
        _p("entity", "reference", "entity.what"),
        _p("recorded", "date", "recorded"),
        _p("when", "date", "occurredDateTime", "occurredPeriod"),
    ],
    "Task": [
        _p("patient", "reference", "for", targets=("Patient",)),
        _p("subject", "reference", "for"),
        _ID,
        _STATUS,
        _CODE,
        _ENCOUNTER,
        _p("focus", "reference", "focus"),
        _p("based-on", "reference", "basedOn"),
        _p("owner", "reference", "owner"),
        _p("requester", "reference", "requester"),
        _p("authored-on", "date", "authoredOn"),
        _p("modified", "date", "lastModified"),
    ],
    "EpisodeOfCare": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("date", "date", "period"),
        _p("organization", "reference", "managingOrganization", targets=("Organization",)),
    ],
    "Goal": [
        *_subject_params(),
        _ID,
        _p("lifecycle-status", "token", "lifecycleStatus"),
        _CATEGORY,
    ],
    "FamilyMemberHistory": [
        _p("patient", "reference", "patient", targets=("Patient",)),
        _ID,
        _STATUS,
        _p("code", "token", "condition.code"),
        _p("relationship", "token", "relationship"),
    ],
}

COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    "Observation": ("subject", "performer"),
    "Encounter": ("patient",),
    "Condition": ("patient", "asserter"),
    "Procedure": ("patient", "performer"),
    "MedicationRequest": ("subject",),
    "MedicationDispense": ("subject", "patient"),
    "MedicationAdministration": ("patient", "subject"),
    "MedicationStatement": ("subject",),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "DiagnosticReport": ("subject",),
    "ImagingStudy": ("patient",),
    "Immunization": ("patient",),
    "DocumentReference": ("subject", "author"),
    "Composition": ("subject", "author"),
    "ServiceRequest": ("subject", "performer", "requester"),
    "Specimen": ("subject",),
    "Appointment": ("actor",),
    "Coverage": ("policy-holder", "subscriber", "beneficiary", "payor"),
    "ChargeItem": ("subject",),
    "Invoice": ("subject", "patient", "recipient"),
    "Claim": ("patient",),
    "ExplanationOfBenefit": ("patient",),
    "CarePlan": ("patient",),
    "CareTeam": ("patient", "participant"),
    "Device": ("patient",),
    "SupplyDelivery": ("patient",),
    "QuestionnaireResponse": ("subject", "author"),
    "AuditEvent": ("patient",),
    "Provenance": ("patient",),
    "Task": ("patient",),
    "EpisodeOfCare": ("patient",),
    "Goal": ("patient",),
    "FamilyMemberHistory": ("patient",),
    "RelatedPerson": ("patient",),
    "Person": ("patient",),
}
"""Per type, the reference parameters whose ``Patient/…`` targets put it in that compartment."""


def params_for(resource_type: str) -> dict[str, SearchParam]:
    """Return the search parameters of ``resource_type`` by name (common ones included)."""
    return _PARAMS_BY_TYPE.get(resource_type) or {p.name: p for p in COMMON}


_PARAMS_BY_TYPE: dict[str, dict[str, SearchParam]] = {
    rtype: {p.name: p for p in (*COMMON, *params)} for rtype, params in RESOURCE_PARAMS.items()
}

_SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+)(?P<choice>\[x\])?(?:\((?P<key>\w+)=(?P<val>[^)]*)\))?$")


@cache
def _compile_path(path: str) -> tuple[tuple[str, bool, str | None, str | None], ...]:
    """Parse a dotted path once into (name, is_choice, filter key, filter value) steps.

    Raises ValueError for a segment the notation does not allow.
    """
    steps = []
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise ValueError(f"bad search path segment {segment!r}")
        name, choice, key, val = match.group("name", "choice", "key", "val")
        steps.append((name, bool(choice), key, val))
    return tuple(steps)


def walk(resource: Any, path: str) -> Iterator[Any]:
    """Yield every value found at ``path`` in ``resource``, flattening lists on the way."""
    current: list[Any] = [resource]
    for name, choice, key, val in _compile_path(path):
        found: list[Any] = []
        for node in current:
            if not isinstance(node, dict):
                continue
            if choice:
                values = [
                    v
                    for k, v in node.items()
                    if k.startswith(name) and k[len(name) : len(name) + 1].isupper()
                ]
            elif name in node:
                values = [node[name]]
            else:
                continue
            for value in values:
                if isinstance(value, list):
                    if key is None:
                        found.extend(value)
                    else:
                        found.extend(i for i in value if isinstance(i, dict) and i.get(key) == val)
                elif key is None or (isinstance(value, dict) and value.get(key) == val):
                    found.append(value)
        if not found:
            return
        current = found
    yield from current


def normalize_string(value: str) -> str:
    """Fold ``value`` for matching: no accents (đ → d), lower case, single spaces."""
    folded = unicodedata.normalize("NFKD", value.replace("đ", "d").replace("Đ", "D"))
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(folded.lower().split())[:STRING_LEN]


_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(value: str) -> tuple[datetime, datetime]:
    """Return the inclusive naive-UTC range a FHIR date, dateTime or instant stands for.

    Raises ValueError for a value that is not a FHIR date.
    """
    match = _DATE_RE.match(value.strip())
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    try:
        return _range(match.groupdict())
    except ValueError as exc:
        raise ValueError(f"not a FHIR date: {value!r} ({exc})") from exc


def _range(g: dict[str, Any]) -> tuple[datetime, datetime]:
    year = int(g["y"])
    if g["m"] is None:
        start = datetime(year, 1, 1)
        end = datetime(year + 1, 1, 1) if year < 9999 else MAX_DATE
    elif g["d"] is None:
        month = int(g["m"])
        start = datetime(year, month, 1)
        end = datetime(year + (month == 12), month % 12 + 1, 1)
    elif g["H"] is None:
        start = datetime(year, int(g["m"]), int(g["d"]))
        end = start + timedelta(days=1)
    else:
        fraction = (g["f"] or "")[:6]
        micro = int(fraction.ljust(6, "0")) if fraction else 0
        start = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), int(g["S"] or 0), micro)
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
            start -= sign * timedelta(hours=hours, minutes=minutes)
        if g["f"]:
            end = start + timedelta(microseconds=1)
        elif g["S"]:
            end = start + timedelta(seconds=1)
        else:
            end = start + timedelta(minutes=1)
    if end is MAX_DATE:
        return start, end
    return start, end - timedelta(microseconds=1)


def utc_naive(moment: datetime) -> datetime:
    """Return ``moment`` as a naive UTC datetime, the form the index tables hold."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def parse_reference(reference: str) -> tuple[str | None, str | None, str | None]:
    """Split a reference into (type, id, url); local ``Type/id[/_history/v]`` gets type and id."""
    if reference.startswith("#") or not reference:
        return None, None, None
    parts = reference.split("/")
    local = "://" not in reference and not reference.startswith("urn:") and "?" not in reference
    shaped = len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history")
    if local and shaped and parts[0][:1].isupper() and parts[1]:
        return parts[0], parts[1], None
    return None, None, reference


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


def _cut(text: Any, size: int = TOKEN_LEN) -> str | None:
    return None if text is None else str(text)[:size]


def extract_values(param: SearchParam, resource: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Return the index rows (without type and id) that ``resource`` has for ``param``."""
    paths, _heads, rows_of = _param_plan(param)
    return _extract(param, paths, rows_of, resource)


def index_values(
    resource_type: str, resource: dict[str, Any]
) -> list[tuple[SearchParam, list[tuple[Any, ...]]]]:
    """Return each parameter of ``resource_type`` that ``resource`` has values for, with its values.

    The values are ``extract_values``'s. A resource has a handful of the twenty-odd
    parameters of its type, so a parameter none of whose paths can start in the
    resource's top-level elements is passed over without walking it.
    """
    found: list[tuple[SearchParam, list[tuple[Any, ...]]]] = []
    for param, paths, heads, rows_of in _type_plan(resource_type):
        if heads is not None:
            for head in heads:
                if head in resource:
                    break
            else:
                continue
        rows = _extract(param, paths, rows_of, resource)
        if rows:
            found.append((param, rows))
    return found


_RowsOf = Callable[[SearchParam, Any], list[tuple[Any, ...]]]


@cache
def _type_plan(
    resource_type: str,
) -> tuple[tuple[SearchParam, tuple[str | tuple[str, ...], ...], tuple[str, ...] | None, _RowsOf], ...]:
    """Return ``_param_plan`` for every parameter of ``resource_type``, looked up once per type."""
    return tuple((param, *_param_plan(param)) for param in params_for(resource_type).values())


@cache
def _param_plan(
    param: SearchParam,
) -> tuple[tuple[str | tuple[str, ...], ...], tuple[str, ...] | None, _RowsOf]:
    """Prepare a parameter for extraction: its paths, the elements they start at, its row maker.

    A path without choices or filters becomes the tuple of its element names, looked up
    without ``walk``. The starting elements are None when a path starts at a choice
    element (``effective[x]``), whose possible names are not listed here.
    """
    compiled = [_compile_path(path) for path in param.paths]
    paths = tuple(
        tuple(name for name, *_ in steps)
        if all(not choice and key is None for _, choice, key, _ in steps)
        else path
        for path, steps in zip(param.paths, compiled, strict=True)
    )
    heads = None if any(steps[0][1] for steps in compiled) else tuple(steps[0][0] for steps in compiled)
    return paths, heads, _ROWS_OF.get(param.kind, _unknown_kind_rows)


def _extract(
    param: SearchParam, paths: tuple[str | tuple[str, ...], ...], rows_of: _RowsOf, resource: dict[str, Any]
) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for path in paths:
        values: Iterable[Any]
        if isinstance(path, str):
            values = walk(resource, path)
        elif len(path) == 1:
            name = path[0]
            if name not in resource:
                continue
            value = resource[name]
            values = value if isinstance(value, list) else (value,)
        else:
            values = _plain_values(resource, path)
        for value in values:
            rows.extend(rows_of(param, value))
    return list(dict.fromkeys(rows)) if len(rows) > 1 else rows


def _plain_values(resource: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    """Return what ``walk`` yields for a path of plain element names."""
    current: list[Any] = [resource]
    for name in names:
        found: list[Any] = []
        for node in current:
            if isinstance(node, dict) and name in node:
                value = node[name]
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
        if not found:
            return found
        current = found
    return current


def _unknown_kind_rows(param: SearchParam, _value: Any) -> list[tuple[Any, ...]]:
    raise ValueError(f"unknown search parameter kind {param.kind!r}")


def _string_rows(_param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    return [(normalize_string(s), s) for s in _strings(value) if s.strip()]


def _token_rows(_param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    return _tokens(value)


def _date_rows(_param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    return _dates(value)


def _quantity_rows(_param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        number = _number(value.get("value"))
        if number is None:
            return []
        code = value.get("code") or value.get("unit")
        rows: list[tuple[Any, ...]] = [(number, _cut(value.get("system")), _cut(code))]
        if value.get("unit") and value.get("code") and value["unit"] != value["code"]:
            rows.append((number, None, _cut(value["unit"])))
        return rows
    number = _number(value)
    return [] if number is None else [(number, None, None)]


def _reference_rows(param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        value = value.get("reference")
    if not isinstance(value, str):
        return []
    rtype, rid, url = parse_reference(value)
    if rtype is None and url is None:
        return []
    if param.targets and rtype not in param.targets:
        return []
    return [(rtype, rid, url)]


def _uri_rows(_param: SearchParam, value: Any) -> list[tuple[Any, ...]]:
    return [(value[:512],)] if isinstance(value, str) else []


_ROWS_OF: dict[str, _RowsOf] = {
    "string": _string_rows,
    "token": _token_rows,
    "date": _date_rows,
    "number": _quantity_rows,
    "quantity": _quantity_rows,
    "reference": _reference_rows,
    "uri": _uri_rows,
}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out: list[str] = []
        for key in (
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
        ):
            item = value.get(key)
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list):
                out.extend(x for x in item if isinstance(x, str))
        return out
    return []


def _tokens(value: Any) -> list[tuple[Any, ...]]:
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str):
        return [(None, _cut(value))]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "system" not in value and "value" not in value):
        rows: list[tuple[Any, ...]] = []
        for coding in value.get("coding", []):
            if isinstance(coding, dict) and (coding.get("code") or coding.get("system")):
                rows.append((_cut(coding.get("system")), _cut(coding.get("code"))))
        return rows
    if "value" in value and not isinstance(value.get("value"), int | float | Decimal):
        return [(_cut(value.get("system")), _cut(value.get("value")))]
    if "code" in value or "system" in value:
        return [(_cut(value.get("system")), _cut(value.get("code")))]
    return []


# The resources of one transaction share their times (an encounter's observations, reports
# and claims carry its start): most dates indexed were parsed a moment before. The cache
# holds about one transaction's dates, not the last requests'.
_date_range_seen = lru_cache(maxsize=128)(date_range)


def _dates(value: Any) -> list[tuple[Any, ...]]:
    try:
        if isinstance(value, str):
            return [_date_range_seen(value)]
        if isinstance(value, dict):
            if "start" in value or "end" in value:
                start = _date_range_seen(value["start"])[0] if value.get("start") else MIN_DATE
                end = _date_range_seen(value["end"])[1] if value.get("end") else MAX_DATE
                return [(start, end)]
            events = value.get("event")
            if isinstance(events, list) and events:
                ranges = [_date_range_seen(e) for e in events if isinstance(e, str)]
                return [(min(r[0] for r in ranges), max(r[1] for r in ranges))] if ranges else []
    except ValueError:
        return []
    return []


def compartment_patients(resource_type: str, resource: dict[str, Any]) -> set[str]:
    """Return the ids of the patients whose compartment ``resource`` belongs to."""
    if resource_type == "Patient":
        return {resource["id"]} if resource.get("id") else set()
    names = COMPARTMENT_PARAMS.get(resource_type, ())
    params = params_for(resource_type)
    patients: set[str] = set()
    for name in names:
        param = params.get(name)
        if param is None:
            continue
        for path in param.paths:
            for value in walk(resource, path):
                ref = value.get("reference") if isinstance(value, dict) else None
                if isinstance(ref, str):
                    rtype, rid, _ = parse_reference(ref)
                    if rtype == "Patient" and rid:
                        patients.add(rid)
    return patients


def all_references(node: Any) -> Iterator[dict[str, Any]]:
    """Yield every Reference object (a dict with a string ``reference``) inside ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for key, value in node.items():
            if key != "contained":
                yield from all_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_references(item)
