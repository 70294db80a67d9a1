"""Record encounters and write e-prescriptions: the worklist, vitals, diagnoses, orders, drugs.

Everything clinical goes through ``fhir.services``; the records tables hold the drug
catalogue, prescription codes and dispensing counters. Functions take a session and
an ``Actor`` and never commit. Raises ``his.errors`` exceptions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir import services as store
from his import events
from his.db import utcnow
from his.errors import N_, Conflict, Gone, NotFound, ValidationFailed
from his.models import PatientSiteAccess, Site
from his.records import mapping
from his.records.catalogue import (
    DRUG_COLUMNS,
    Drug,
    fold,
    icd10,
    orderable_service,
    parse_drug_rows,
    seed_drugs,
)
from his.records.codes import new_code, prescription_type
from his.records.dosing import (
    DosageNotUnderstood,
    PatientFacts,
    check_rules,
    parse_dosage,
    quantity,
    unit_matches,
)
from his.records.models import CatalogueDrug, PerformedOrder, Prescription, PrescriptionItem, Signature
from his.records.safety import Allergy, PlannedItem, SafetyWarning, check_prescription

WORKLIST_STATUSES = "arrived,triaged,in-progress"
PRESCRIPTION_VALID_DAYS = 5
QUEUE_SYSTEM_SUFFIX = "queue-number"
PERFORMED_TOPIC = "service.performed"


@dataclass(frozen=True)
class Actor:
    """Who acts: the signed-in staff member, as services need them."""

    user_id: int
    username: str
    full_name: str
    site_id: int | None
    role: str


def practitioner_reference(session: Session, actor: Actor) -> str:
    """Return ``Practitioner/<id>`` for the actor, creating the Practitioner the first time."""
    stored = store.create(
        session,
        mapping.practitioner(actor.username, actor.full_name),
        if_none_exist=f"identifier={mapping.USER_SYSTEM}|{actor.username}",
    )
    return stored.reference


def now_text() -> str:
    return mapping.moment(utcnow().replace(microsecond=0))


def _reference_id(reference: dict[str, Any] | None, kind: str) -> str | None:
    value = (reference or {}).get("reference", "")
    prefix = f"{kind}/"
    return value[len(prefix) :].split("/")[0] if value.startswith(prefix) else None


@dataclass(frozen=True)
class EncounterView:
    """An Encounter with the patient it belongs to."""

    id: str
    patient_id: str
    status: str
    resource: dict[str, Any]


def load_encounter(session: Session, encounter_id: str) -> EncounterView:
    """Return an Encounter and its patient id.

    Raises NotFound (or Gone) for an unknown encounter.
    """
    resource = store.read(session, "Encounter", encounter_id).resource
    patient_id = _reference_id(resource.get("subject"), "Patient")
    if patient_id is None:
        raise NotFound(N_("This encounter has no patient."), code="ENCOUNTER_WITHOUT_PATIENT")
    return EncounterView(encounter_id, patient_id, resource.get("status", ""), resource)


def is_signed(session: Session, encounter_id: str) -> bool:
    """Tell whether the encounter's record was signed."""
    return (
        session.scalar(select(Signature.id).where(Signature.encounter_id == encounter_id).limit(1))
        is not None
    )


def ensure_open(session: Session, encounter_id: str) -> EncounterView:
    """Return the encounter if it may still be written.

    Raises Conflict (RECORD_SIGNED) once it is signed: a change is then an amendment.
    """
    encounter = load_encounter(session, encounter_id)
    if is_signed(session, encounter_id):
        raise Conflict(
            N_("This record is signed and can no longer be changed; write an amendment instead."),
            code="RECORD_SIGNED",
            extra={"amend": f"/records/encounters/{encounter_id}/amend"},
        )
    return encounter


def _queue_number(resource: dict[str, Any]) -> int | None:
    for identifier in resource.get("identifier", []):
        if str(identifier.get("system", "")).endswith(QUEUE_SYSTEM_SUFFIX):
            try:
                return int(identifier.get("value"))
            except (TypeError, ValueError):
                return None
    return None


@dataclass(frozen=True)
class WorklistEntry:
    """A checked-in patient waiting for, or seeing, the doctor."""

    encounter_id: str
    patient_id: str
    patient_name: str
    queue_number: int | None
    status: str
    arrived: str
    clinic: str = ""


def worklist(
    session: Session, site: Site, day: date, zone: Any, *, location_id: str | None = None
) -> list[WorklistEntry]:
    """Return the day's checked-in encounters of the site (or of one clinic) in queue order.

    The queue number is read from the Encounter's own identifier or from the booked
    Appointment it points to (``…queue-number`` identifier systems).
    """
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    params = [
        ("status", WORKLIST_STATUSES),
        ("date", f"ge{mapping.moment(start)}"),
        ("date", f"lt{mapping.moment(start + timedelta(days=1))}"),
        ("_count", "500"),
        ("_include", "Encounter:subject"),
        ("_include", "Encounter:appointment"),
        ("_include", "Encounter:location"),
    ]
    if site.organization_id:
        params.append(("service-provider", f"Organization/{site.organization_id}"))
    if location_id:
        params.append(("location", f"Location/{location_id}"))
    result = store.search(session, "Encounter", params)
    included = {(r.type, r.id): r.resource for r in result.included}
    visible = set(
        session.scalars(select(PatientSiteAccess.patient_id).where(PatientSiteAccess.site_id == site.id))
    )
    entries = []
    for match in result.matches:
        resource = match.resource
        patient_id = _reference_id(resource.get("subject"), "Patient")
        if patient_id is None or patient_id not in visible:
            continue
        number = _queue_number(resource)
        for appointment in resource.get("appointment", []):
            booked = included.get(("Appointment", _reference_id(appointment, "Appointment") or ""))
            number = number if number is not None else (_queue_number(booked) if booked else None)
        clinic = ""
        for location in resource.get("location", []):
            place = included.get(("Location", _reference_id(location.get("location"), "Location") or ""))
            clinic = (
                clinic or (place or {}).get("name", "") or (location.get("location") or {}).get("display", "")
            )
        entries.append(
            WorklistEntry(
                encounter_id=match.id,
                patient_id=patient_id,
                patient_name=patient_name(included.get(("Patient", patient_id), {})),
                queue_number=number,
                status=resource.get("status", ""),
                arrived=(resource.get("period") or {}).get("start", ""),
                clinic=clinic,
            )
        )
    entries.sort(key=lambda e: (e.queue_number is None, e.queue_number or 0, e.arrived))
    return entries


def patient_name(resource: dict[str, Any]) -> str:
    name = (resource.get("name") or [{}])[0]
    return str(name.get("text") or " ".join([name.get("family", ""), *name.get("given", [])]).strip())


def start_encounter(session: Session, encounter_id: str, actor: Actor) -> EncounterView:
    """Put a checked-in encounter in progress with the doctor as participant (idempotent).

    Raises Conflict when it is signed, NotFound when unknown.
    """
    encounter = ensure_open(session, encounter_id)
    resource = dict(encounter.resource)
    who = practitioner_reference(session, actor)
    changed = False
    if resource.get("status") in ("planned", "arrived", "triaged"):
        resource["status"] = "in-progress"
        changed = True
    participants = resource.get("participant", [])
    if not any((p.get("individual") or {}).get("reference") == who for p in participants):
        resource["participant"] = [
            *participants,
            {"individual": {"reference": who, "display": actor.full_name}},
        ]
        changed = True
    if changed:
        resource.pop("meta", None)
        store.update(session, "Encounter", encounter_id, resource)
    return load_encounter(session, encounter_id)


@dataclass(frozen=True)
class Vitals:
    """Vital signs as typed by the doctor or nurse; any may be missing."""

    systolic: Decimal | None = None
    diastolic: Decimal | None = None
    pulse: Decimal | None = None
    temperature: Decimal | None = None
    respiratory_rate: Decimal | None = None
    spo2: Decimal | None = None
    weight: Decimal | None = None
    height: Decimal | None = None


def parse_decimal(raw: str | None, name: str, errors: dict[str, str]) -> Decimal | None:
    """Read an optional number typed with a dot or a Vietnamese comma; note a bad one in ``errors``."""
    text = (raw or "").strip().replace(",", ".")
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        errors[name] = N_("Enter a number.")
        return None
    if not value.is_finite():
        errors[name] = N_("Enter a number.")
        return None
    return value


def record_vitals(session: Session, encounter_id: str, vitals: Vitals, actor: Actor) -> list[str]:
    """Store the vital signs given as LOINC Observations, with BMI computed; return their ids.

    Raises ValidationFailed naming each implausible value, Conflict once signed.
    """
    encounter = ensure_open(session, encounter_id)
    errors: dict[str, str] = {}
    for name, _code, _display, _unit, low, high in mapping.VITALS:
        value = getattr(vitals, name, None)
        if value is not None and not (low <= value <= high):
            errors[name] = N_("This value is outside the possible range.")
    for name, (_c, _d, low, high) in (("systolic", mapping.SYSTOLIC), ("diastolic", mapping.DIASTOLIC)):
        value = getattr(vitals, name)
        if value is not None and not (low <= value <= high):
            errors[name] = N_("This value is outside the possible range.")
    if (vitals.systolic is None) != (vitals.diastolic is None):
        errors["systolic" if vitals.systolic is None else "diastolic"] = N_(
            "Give both blood pressure values."
        )
    elif vitals.systolic is not None and vitals.diastolic is not None and vitals.systolic <= vitals.diastolic:
        errors["diastolic"] = N_("The diastolic pressure must be lower than the systolic.")
    if errors:
        raise ValidationFailed(N_("Some vital signs are not valid."), fields=errors)
    when = now_text()
    who = practitioner_reference(session, actor)
    created = []
    if vitals.systolic is not None and vitals.diastolic is not None:
        created.append(
            mapping.blood_pressure(
                vitals.systolic, vitals.diastolic, encounter.patient_id, encounter_id, when, who
            )
        )
    for name, *_rest in mapping.VITALS:
        value = getattr(vitals, name, None)
        if value is not None:
            created.append(
                mapping.vital_observation(name, value, encounter.patient_id, encounter_id, when, who)
            )
    if vitals.weight is not None and vitals.height is not None:
        metres = vitals.height / 100
        bmi = (vitals.weight / (metres * metres)).quantize(Decimal("0.1"))
        created.append(mapping.vital_observation("bmi", bmi, encounter.patient_id, encounter_id, when, who))
    if not created:
        raise ValidationFailed(N_("Enter at least one vital sign."), fields={"pulse": N_("Required.")})
    return [store.create(session, resource).id for resource in created]


def add_diagnosis(session: Session, encounter_id: str, code: str, actor: Actor, *, note: str = "") -> str:
    """Record a diagnosis coded in ICD-10 (the first one is the main diagnosis); return its id.

    Raises ValidationFailed for a code outside the catalogue, Conflict once signed.
    """
    encounter = ensure_open(session, encounter_id)
    entry = icd10(code)
    if entry is None:
        raise ValidationFailed(
            N_("This ICD-10 code is not in the catalogue."), fields={"icd10": N_("Unknown code.")}
        )
    existing = store.search(
        session, "Condition", [("encounter", f"Encounter/{encounter_id}"), ("_count", "100")]
    )
    if any(
        c.get("code") == entry.code
        for match in existing.matches
        for c in match.resource.get("code", {}).get("coding", [])
    ):
        raise Conflict(N_("This diagnosis is already recorded."), code="DIAGNOSIS_DUPLICATE")
    resource = mapping.condition(
        entry,
        encounter.patient_id,
        encounter_id,
        now_text(),
        practitioner_reference(session, actor),
        primary=not existing.matches,
        note=note.strip(),
    )
    return store.create(session, resource).id


def add_allergy(
    session: Session, encounter_id: str, substance: str, actor: Actor, *, reaction: str = ""
) -> str:
    """Record a drug allergy to an ingredient or drug class of the catalogue; return its id.

    Raises ValidationFailed for a substance the catalogue does not know, Conflict once signed.
    """
    encounter = ensure_open(session, encounter_id)
    key, label = resolve_substance(session, substance)
    resource = mapping.allergy(
        key,
        label,
        encounter.patient_id,
        encounter_id,
        now_text(),
        practitioner_reference(session, actor),
        reaction,
    )
    return store.create(session, resource).id


def resolve_substance(session: Session, substance: str) -> tuple[str, str]:
    """Map what was typed (an ingredient, a class, or a drug code) to an allergy key and label.

    Raises ValidationFailed when nothing in the catalogue matches.
    """
    wanted = fold(substance).removeprefix("class:")
    drugs = catalogue(session).values()
    for drug in drugs:
        if drug.code.lower() == wanted:
            first = drug.ingredients[0].name
            return first, first
        for ingredient in drug.ingredients:
            if fold(ingredient.name) == wanted:
                return ingredient.name, ingredient.name
    for drug in drugs:
        for cls in drug.classes:
            if fold(cls) == wanted:
                return f"class:{cls}", cls
    raise ValidationFailed(
        N_("This substance is not in the drug catalogue."), fields={"substance": N_("Unknown substance.")}
    )


def add_order(
    session: Session, encounter_id: str, category: str, text: str, actor: Actor, *, service_code: str = ""
) -> str:
    """Order a lab test, imaging or pathology as a ServiceRequest; return its id.

    With ``service_code`` the order is that catalogue service (its category, coded, so it
    can be charged once performed) and ``text`` becomes a note; without it, ``text`` is
    a free-text order of ``category`` (never charged).

    Raises ValidationFailed for an unknown service or category or an empty order,
    Conflict once signed.
    """
    encounter = ensure_open(session, encounter_id)
    errors = {}
    service = None
    if service_code.strip():
        service = orderable_service(service_code)
        if service is None:
            errors["service"] = N_("Choose a service of the list.")
    else:
        if category not in mapping.ORDER_CATEGORIES:
            errors["category"] = N_("Choose lab, imaging or pathology.")
        if not text.strip():
            errors["order"] = N_("Say what is ordered.")
    if errors:
        raise ValidationFailed(N_("The order is not complete."), fields=errors)
    resource = mapping.service_request(
        category,
        text.strip(),
        encounter.patient_id,
        encounter_id,
        now_text(),
        practitioner_reference(session, actor),
        service=service,
        note=text.strip() if service is not None else "",
    )
    return store.create(session, resource).id


@dataclass(frozen=True)
class Performance:
    """An order carried out: the Procedure recording it and what billing needs."""

    procedure_id: str
    order_id: str
    encounter_id: str
    patient_id: str
    item_code: str | None
    performed_at: str


def perform_order(session: Session, encounter_id: str, order_id: str, actor: Actor) -> Performance:
    """Record that an order was carried out, as a Procedure based on it, and tell billing.

    The signed ServiceRequest is left as it was (performing is not a change of the signed
    record), so this works before and after signing. A coded order publishes
    ``service.performed`` with the Procedure's id as ``performed_id``; a free-text order
    has no price-list code and is not charged.

    Raises NotFound when the order is not one of this encounter's, Conflict when it was
    already performed or is no longer active.
    """
    encounter = load_encounter(session, encounter_id)
    try:
        order = store.read(session, "ServiceRequest", order_id).resource
    except (NotFound, Gone):
        raise NotFound(N_("This encounter has no such order."), code="ORDER_NOT_FOUND") from None
    if order.get("encounter", {}).get("reference") != f"Encounter/{encounter_id}":
        raise NotFound(N_("This encounter has no such order."), code="ORDER_NOT_FOUND")
    already = N_("This order was already performed.")
    if session.scalar(select(PerformedOrder.id).where(PerformedOrder.service_request_id == order_id)):
        raise Conflict(already, code="ORDER_ALREADY_PERFORMED")
    if order.get("status") != "active":
        raise Conflict(N_("Only an active order can be performed."), code="ORDER_NOT_ACTIVE")
    when = now_text()
    try:
        with session.begin_nested():
            procedure = store.create(
                session,
                mapping.performed_procedure(order, when, practitioner_reference(session, actor)),
            )
            session.add(
                PerformedOrder(
                    service_request_id=order_id,
                    procedure_id=procedure.id,
                    encounter_id=encounter_id,
                    performer_id=actor.user_id,
                    performed_at=datetime.fromisoformat(when),
                )
            )
            session.flush()
    except IntegrityError:
        # Someone else marked it at the same moment and committed first.
        raise Conflict(already, code="ORDER_ALREADY_PERFORMED") from None
    result = Performance(
        procedure.id, order_id, encounter_id, encounter.patient_id, mapping.service_code(order), when
    )
    if result.item_code is not None:
        events.publish(
            PERFORMED_TOPIC,
            {
                "performed_id": result.procedure_id,
                "encounter_id": encounter_id,
                "patient_id": encounter.patient_id,
                "item_code": result.item_code,
                "quantity": 1,
                "performed_at": when,
            },
        )
    return result


def performed_orders(session: Session, encounter_id: str) -> dict[str, PerformedOrder]:
    """Return the encounter's performed orders by ServiceRequest id."""
    rows = session.scalars(select(PerformedOrder).where(PerformedOrder.encounter_id == encounter_id))
    return {row.service_request_id: row for row in rows}


def save_note(
    session: Session, encounter_id: str, sections: dict[str, str], actor: Actor, *, title: str = "Khám bệnh"
) -> str:
    """Write the encounter's note (one Composition per encounter, replaced while unsigned)."""
    encounter = ensure_open(session, encounter_id)
    unknown = set(sections) - set(mapping.NOTE_SECTIONS)
    if unknown:
        raise ValidationFailed(N_("Unknown note section."), fields={name: N_("Unknown.") for name in unknown})
    resource = mapping.clinical_note(
        sections,
        encounter.patient_id,
        encounter_id,
        now_text(),
        practitioner_reference(session, actor),
        title,
    )
    existing = store.search(session, "Composition", [("encounter", f"Encounter/{encounter_id}")])
    if existing.matches:
        resource["id"] = existing.matches[0].id
        return store.update(session, "Composition", resource["id"], resource).id
    return store.create(session, resource).id


@dataclass
class EncounterRecord:
    """Everything recorded in one encounter, read back from the store."""

    encounter: EncounterView
    observations: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    allergies: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    note: dict[str, str] = field(default_factory=dict)
    medication_requests: list[dict[str, Any]] = field(default_factory=list)


def _by_encounter(session: Session, rtype: str, encounter_id: str) -> list[dict[str, Any]]:
    result = store.search(session, rtype, [("encounter", f"Encounter/{encounter_id}"), ("_count", "500")])
    return [m.resource for m in result.matches]


def encounter_record(session: Session, encounter_id: str) -> EncounterRecord:
    """Read everything recorded in an encounter. Raises NotFound for an unknown encounter."""
    encounter = load_encounter(session, encounter_id)
    record = EncounterRecord(encounter)
    record.observations = _by_encounter(session, "Observation", encounter_id)
    record.conditions = _by_encounter(session, "Condition", encounter_id)
    record.orders = _by_encounter(session, "ServiceRequest", encounter_id)
    record.medication_requests = _by_encounter(session, "MedicationRequest", encounter_id)
    record.allergies = patient_allergy_resources(session, encounter.patient_id)
    notes = _by_encounter(session, "Composition", encounter_id)
    if notes:
        codes = {v[0]: k for k, v in mapping.NOTE_SECTIONS.items()}
        for section in notes[0].get("section", []):
            code = (section.get("code", {}).get("coding") or [{}])[0].get("code")
            if code in codes:
                record.note[codes[code]] = mapping.note_text(section)
    return record


def patient_allergy_resources(session: Session, patient_id: str) -> list[dict[str, Any]]:
    result = store.search(
        session, "AllergyIntolerance", [("patient", f"Patient/{patient_id}"), ("_count", "200")]
    )
    return [m.resource for m in result.matches]


def patient_allergies(session: Session, patient_id: str) -> list[Allergy]:
    """Return the patient's active drug allergies as the safety checks need them."""
    found = []
    for resource in patient_allergy_resources(session, patient_id):
        status = ((resource.get("clinicalStatus") or {}).get("coding") or [{}])[0].get("code", "active")
        key = mapping.allergy_key(resource)
        if key and status == "active":
            found.append(Allergy(*key))
    return found


def past_encounters(
    session: Session, patient_id: str, *, exclude: str | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """Return the patient's previous encounters, newest first, with their diagnoses."""
    result = store.search(
        session,
        "Encounter",
        [("patient", f"Patient/{patient_id}"), ("_sort", "-date"), ("_count", str(limit + 1))],
    )
    visits = []
    for match in result.matches:
        if match.id == exclude:
            continue
        conditions = _by_encounter(session, "Condition", match.id)
        visits.append(
            {
                "id": match.id,
                "start": (match.resource.get("period") or {}).get("start", ""),
                "status": match.resource.get("status"),
                "diagnoses": [
                    f"{c['code']['coding'][0]['code']} {c['code'].get('text', '')}"
                    for c in conditions
                    if c.get("code")
                ],
                "signed": is_signed(session, match.id),
            }
        )
    # The store sorts by the whole period; a visit still open (no end) would come first.
    visits.sort(key=lambda visit: _start_moment(visit["start"]), reverse=True)
    return visits[:limit]


def _start_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _drug_row(drug_row: Mapping[str, str]) -> dict[str, str]:
    return {column: str(drug_row.get(column, "") or "") for column in DRUG_COLUMNS}


def _upsert(session: Session, rows: list[dict[str, str]]) -> int:
    drugs = parse_drug_rows(rows)
    by_code = {r["code"].strip(): r for r in rows}
    for drug in drugs:
        existing = session.get(CatalogueDrug, drug.code)
        row = _drug_row(by_code[drug.code])
        search_text = fold(f"{drug.code} {drug.name} {' '.join(drug.ingredient_names)}")[:400]
        if existing is None:
            existing = CatalogueDrug(code=drug.code, row=row)
            session.add(existing)
        existing.name, existing.search_text, existing.antibiotic, existing.row = (
            drug.name,
            search_text,
            drug.antibiotic,
            row,
        )
        existing.active = True
        existing.updated_at = utcnow()
    session.flush()
    return len(drugs)


def import_drugs(session: Session, text: str) -> int:
    """Add or update drugs from a CSV file; return how many were read.

    The shipped seed catalogue is always there underneath; an imported row with the same
    code replaces the seed drug. Raises ValidationFailed naming every bad line (nothing
    is imported then).
    """
    from his.records.catalogue import parse_drug_csv

    parse_drug_csv(text)
    return _upsert(session, list(csv.DictReader(io.StringIO(text.lstrip("\ufeff")))))


def withdraw_drug(session: Session, code: str) -> None:
    """Stop offering a drug for new prescriptions (seed or imported).

    Raises NotFound for a code the catalogue does not have.
    """
    drug = get_drug(session, code)
    if drug is None:
        raise NotFound(N_("Unknown drug code."), code="DRUG_NOT_FOUND")
    row = session.get(CatalogueDrug, drug.code)
    if row is None:
        _upsert(session, [_seed_row(drug.code)])
        row = session.get(CatalogueDrug, drug.code)
    assert row is not None
    row.active = False
    session.flush()


def _seed_row(code: str) -> dict[str, str]:
    from his.records.catalogue import DATA_DIR

    with (DATA_DIR / "drugs.csv").open(encoding="utf-8", newline="") as handle:
        return next(r for r in csv.DictReader(handle) if r["code"] == code)


def catalogue(session: Session) -> dict[str, Drug]:
    """Return the active catalogue by code: the seed, overridden and extended by imports."""
    drugs = dict(seed_drugs())
    rows = session.scalars(select(CatalogueDrug)).all()
    active = [r.row for r in rows if r.active]
    for row in rows:
        if not row.active:
            drugs.pop(row.code, None)
    if active:
        drugs.update({d.code: d for d in parse_drug_rows(active)})
    return drugs


def get_drug(session: Session, code: str) -> Drug | None:
    """Return one active drug of the catalogue, or None."""
    row = session.get(CatalogueDrug, code.strip())
    if row is not None:
        return parse_drug_rows([row.row])[0] if row.active else None
    return seed_drugs().get(code.strip())


def search_drugs(session: Session, query: str, limit: int = 20) -> list[Drug]:
    """Find drugs by code, name or ingredient, with or without diacritics."""
    words = fold(query).split()
    if not words:
        return []
    stmt = select(CatalogueDrug)
    for word in words:
        stmt = stmt.where(CatalogueDrug.search_text.contains(word, autoescape=True))
    rows = session.scalars(stmt.limit(limit)).all()
    overridden = set(session.scalars(select(CatalogueDrug.code)))
    found = {d.code: d for d in parse_drug_rows([r.row for r in rows if r.active])} if rows else {}
    for drug in seed_drugs().values():
        text = fold(f"{drug.code} {drug.name} {' '.join(drug.ingredient_names)}")
        if drug.code not in overridden and all(w in text for w in words):
            found[drug.code] = drug
    return sorted(found.values(), key=lambda d: d.name)[:limit]


@dataclass(frozen=True)
class DraftLine:
    """One line the doctor typed: drug code, dosing text and an optional note."""

    drug_code: str
    dosage: str
    note: str = ""


@dataclass(frozen=True)
class DraftPrescription:
    """A prescription as typed, before the checks."""

    lines: tuple[DraftLine, ...]
    days: int
    weight_kg: Decimal | None = None
    guardian_name: str | None = None
    advice: str = ""
    follow_up: date | None = None


@dataclass(frozen=True)
class PlannedLine:
    """A checked line: the drug, the understood dosage and the quantity to dispense."""

    line: int
    drug: Drug
    item: PlannedItem
    quantity: Decimal
    note: str


@dataclass(frozen=True)
class Plan:
    """A prescription that meets the rules, with the warnings it raises."""

    lines: tuple[PlannedLine, ...]
    warnings: tuple[SafetyWarning, ...]
    kind: str


def patient_facts(
    session: Session, patient_id: str, weight: Decimal | None, guardian: str | None
) -> PatientFacts:
    resource = store.read(session, "Patient", patient_id).resource
    birth = resource.get("birthDate")
    try:
        birth_date = date.fromisoformat(birth) if birth and len(birth) == 10 else None
    except ValueError:
        birth_date = None
    return PatientFacts(birth_date=birth_date, weight_kg=weight, guardian_name=guardian)


def current_medicines(session: Session, patient_id: str, exclude_encounter: str, on: date) -> list[Drug]:
    """Return the drugs of the patient's prescriptions from other encounters still running on a day."""
    result = store.search(
        session,
        "MedicationRequest",
        [("patient", f"Patient/{patient_id}"), ("status", "active"), ("_count", "200")],
    )
    drugs = catalogue(session)
    found = []
    for match in result.matches:
        resource = match.resource
        if _reference_id(resource.get("encounter"), "Encounter") == exclude_encounter:
            continue
        period = (resource.get("dispenseRequest") or {}).get("validityPeriod") or {}
        days = ((resource.get("dispenseRequest") or {}).get("expectedSupplyDuration") or {}).get("value", 0)
        start = period.get("start", "")
        if start:
            try:
                end = date.fromisoformat(start) + timedelta(days=int(days))
            except (TypeError, ValueError):
                continue
            if end < on:
                continue
        for coding in resource.get("medicationCodeableConcept", {}).get("coding", []):
            if coding.get("system") == mapping.DRUG_SYSTEM and coding.get("code") in drugs:
                found.append(drugs[coding["code"]])
    return found


def plan_prescription(
    session: Session, encounter: EncounterView, draft: DraftPrescription, *, on: date, locale: str = "vi"
) -> Plan:
    """Check a typed prescription against the catalogue, the rules and the safety checks.

    Raises ValidationFailed naming each bad line (``lines.<n>.drug``, ``lines.<n>.dosage``)
    or broken rule (``days``, ``weight``...). Warnings are returned, not raised.
    """
    errors: dict[str, str] = {}
    if not draft.lines:
        errors["lines"] = N_("Prescribe at least one drug.")
    planned: list[PlannedLine] = []
    for index, line in enumerate(draft.lines, start=1):
        drug = get_drug(session, line.drug_code)
        if drug is None:
            errors[f"lines.{index}.drug"] = N_("Unknown drug code.")
            continue
        try:
            dosage = parse_dosage(line.dosage)
        except DosageNotUnderstood:
            errors[f"lines.{index}.dosage"] = N_("Write the dose like 'sáng 1 viên, chiều 1 viên'.")
            continue
        if not unit_matches(dosage, drug):
            errors[f"lines.{index}.dosage"] = N_("The dose unit does not match the drug's unit.")
            continue
        planned.append(
            PlannedLine(
                index, drug, PlannedItem(drug, dosage), quantity(dosage, max(draft.days, 1), drug), line.note
            )
        )
    facts = patient_facts(session, encounter.patient_id, draft.weight_kg, draft.guardian_name)
    try:
        check_rules([p.drug for p in planned], draft.days, facts, on)
    except ValidationFailed as exc:
        errors.update(exc.fields)
    kinds = [p.drug.prescription_type for p in planned]
    if len(set(kinds)) > 1 and ("N" in kinds or "H" in kinds):
        errors["lines"] = N_("Narcotic and psychotropic drugs go on a prescription of their own.")
    if errors:
        raise ValidationFailed(N_("The prescription cannot be saved."), fields=errors)
    warnings = check_prescription(
        [p.item for p in planned],
        facts,
        allergies=patient_allergies(session, encounter.patient_id),
        current=current_medicines(session, encounter.patient_id, encounter.id, on),
        on=on,
        locale=locale,
    )
    return Plan(tuple(planned), tuple(warnings), prescription_type(kinds))


def save_prescription(
    session: Session,
    encounter_id: str,
    draft: DraftPrescription,
    actor: Actor,
    *,
    on: date,
    locale: str = "vi",
) -> tuple[Prescription, Plan]:
    """Save the encounter's prescription as draft MedicationRequests grouped by a new code.

    A draft saved again replaces the previous draft (its code is kept when the type is
    unchanged). Raises ValidationFailed (see ``plan_prescription``), Conflict once signed.
    """
    encounter = ensure_open(session, encounter_id)
    plan = plan_prescription(session, encounter, draft, on=on, locale=locale)
    site = session.get(Site, actor.site_id) if actor.site_id else None
    if site is None or not site.facility_code:
        raise Conflict(N_("The site has no facility code to number prescriptions."), code="NO_FACILITY_CODE")
    prescription = session.scalar(
        select(Prescription).where(Prescription.encounter_id == encounter_id, Prescription.status == "draft")
    )
    if prescription is not None and prescription.kind != plan.kind:
        discard_draft(session, prescription)
        prescription = None
    if prescription is None:
        facility = site.facility_code.upper()

        def taken(random: str) -> bool:
            used = select(Prescription.id).where(Prescription.code.startswith(f"{facility}{random}-"))
            return session.scalar(used) is not None

        code = new_code(facility, plan.kind, taken)
        prescription = Prescription(
            code=str(code),
            facility_code=code.facility,
            kind=plan.kind,
            site_id=site.id,
            patient_id=encounter.patient_id,
            encounter_id=encounter_id,
            prescriber_id=actor.user_id,
            days=draft.days,
        )
        session.add(prescription)
    else:
        discard_lines(session, prescription)
    prescription.days = draft.days
    prescription.weight_kg = draft.weight_kg
    prescription.guardian_name = (draft.guardian_name or "").strip() or None
    prescription.advice = draft.advice.strip() or None
    prescription.follow_up = draft.follow_up
    prescription.valid_until = on + timedelta(days=PRESCRIPTION_VALID_DAYS - 1)
    session.flush()
    when = now_text()
    requester = practitioner_reference(session, actor)
    for planned in plan.lines:
        resource = mapping.medication_request(
            mapping.RequestLine(
                planned.line, planned.drug, planned.item.dosage, planned.quantity, planned.note
            ),
            prescription.code,
            draft.days,
            encounter.patient_id,
            encounter_id,
            when,
            requester,
            prescription.valid_until,
        )
        stored = store.create(session, resource)
        session.add(
            PrescriptionItem(
                prescription_id=prescription.id,
                line=planned.line,
                drug_code=planned.drug.code,
                medication_request_id=stored.id,
                quantity=planned.quantity,
                dispensed=Decimal(0),
            )
        )
    session.flush()
    return prescription, plan


def discard_lines(session: Session, prescription: Prescription) -> None:
    """Delete a draft's MedicationRequests and lines (only drafts are ever deleted)."""
    for item in session.scalars(
        select(PrescriptionItem).where(PrescriptionItem.prescription_id == prescription.id)
    ):
        store.delete_resource(session, "MedicationRequest", item.medication_request_id)
    session.execute(delete(PrescriptionItem).where(PrescriptionItem.prescription_id == prescription.id))


def discard_draft(session: Session, prescription: Prescription) -> None:
    """Drop an unsigned prescription entirely."""
    if prescription.status != "draft":
        raise Conflict(
            N_("A signed prescription is never changed; write a new one."), code="PRESCRIPTION_SIGNED"
        )
    discard_lines(session, prescription)
    session.delete(prescription)
    session.flush()


def draft_of(session: Session, encounter_id: str) -> Prescription | None:
    return session.scalar(
        select(Prescription).where(Prescription.encounter_id == encounter_id, Prescription.status == "draft")
    )


def replan(session: Session, prescription: Prescription, *, on: date, locale: str = "vi") -> Plan:
    """Run the checks again on a saved draft (allergies may have been added since)."""
    encounter = load_encounter(session, prescription.encounter_id)
    items = session.scalars(
        select(PrescriptionItem)
        .where(PrescriptionItem.prescription_id == prescription.id)
        .order_by(PrescriptionItem.line)
    ).all()
    lines = []
    for item in items:
        resource = store.read(session, "MedicationRequest", item.medication_request_id).resource
        instruction = resource["dosageInstruction"][0]
        lines.append(
            DraftLine(item.drug_code, instruction["text"], instruction.get("patientInstruction", ""))
        )
    draft = DraftPrescription(
        tuple(lines),
        prescription.days,
        prescription.weight_kg,
        prescription.guardian_name,
        prescription.advice or "",
    )
    return plan_prescription(session, encounter, draft, on=on, locale=locale)
