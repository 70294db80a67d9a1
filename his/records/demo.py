"""Load the records demo: the demo patient's past visits with signed prescriptions, and today's queue.

Everything goes through the records services the pages use, so the visits are real FHIR
records with real signatures: the patient reads them in "My records" (with the QR and
the PDF), the pharmacist finds the recent prescription in the queue or by its code, the
manager's antibiotic report counts them, and the doctor's worklist has patients waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir import services as store
from his.db import utcnow
from his.demo import DEMO_PATIENTS, register_demo_loader
from his.i18n import local_zone
from his.models import Site, User
from his.records import mapping, services
from his.records.models import Prescription
from his.records.services import Actor, DraftLine, DraftPrescription, Vitals
from his.records.signatures import sign_encounter

DEMO_CLINIC = "Phòng khám Nội 3"
QUEUE_SYSTEM = "urn:vetinh:queue-number"


@dataclass(frozen=True)
class PastVisit:
    """A visit of the demo patient some days ago, as the doctor recorded and signed it."""

    days_ago: int
    vitals: Vitals
    diagnosis: str
    complaint: str
    lines: tuple[DraftLine, ...]
    days: int
    advice: str


PAST_VISITS = (
    PastVisit(
        days_ago=23,
        vitals=Vitals(
            systolic=Decimal(152),
            diastolic=Decimal(94),
            pulse=Decimal(82),
            temperature=Decimal("36.8"),
            weight=Decimal(68),
            height=Decimal(168),
        ),
        diagnosis="I10",
        complaint="Đau đầu vùng chẩm buổi sáng, đo huyết áp ở nhà 150/95 mmHg.",
        lines=(DraftLine("VTS0072", "sáng 1 viên", "uống sau ăn sáng"),),
        days=30,
        advice="Ăn nhạt, đi bộ 30 phút mỗi ngày, tự đo huyết áp sáng và tối.",
    ),
    # Recent enough that the prescription is still valid: the pharmacist can dispense it.
    PastVisit(
        days_ago=1,
        vitals=Vitals(
            systolic=Decimal(128),
            diastolic=Decimal(80),
            pulse=Decimal(96),
            temperature=Decimal("38.4"),
            spo2=Decimal(98),
            weight=Decimal(67),
        ),
        diagnosis="J02.0",
        complaint="Sốt, đau họng, nuốt đau 2 ngày; họng đỏ, amidan sưng có mủ.",
        lines=(
            DraftLine("VTS0020", "sáng 1 viên, chiều 1 viên, tối 1 viên", "uống sau ăn"),
            DraftLine("VTS0001", "sáng 1 viên, chiều 1 viên, tối 1 viên", "khi sốt trên 38,5 độ"),
        ),
        days=7,
        advice="Uống đủ nước, súc họng nước muối. Tái khám nếu sốt quá 3 ngày.",
    ),
)
# Demo patients checked in today, in queue order (the first one is the demo patient account).
TODAY_QUEUE = (DEMO_PATIENTS[1].full_name, DEMO_PATIENTS[2].full_name, DEMO_PATIENTS[4].full_name)


def _patient_id(session: Session, full_name: str) -> str | None:
    found = store.search(session, "Patient", [("name", full_name), ("_count", "1")])
    return found.matches[0].id if found.matches else None


def _clinic_location(session: Session) -> dict[str, Any]:
    """Point at booking's clinic Location when there is one, else name the clinic only."""
    found = store.search(session, "Location", [("name", DEMO_CLINIC), ("_count", "1")])
    location: dict[str, Any] = {"display": DEMO_CLINIC}
    if found.matches:
        location["reference"] = f"Location/{found.matches[0].id}"
    return location


def _arrived_encounter(
    session: Session, site: Site, patient_id: str, arrived: datetime, location: dict[str, Any], queue: int
) -> str:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "arrived",
        "class": {"system": mapping.ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "identifier": [{"system": QUEUE_SYSTEM, "value": str(queue)}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": mapping.moment(arrived.replace(microsecond=0))},
        "location": [{"location": location}],
    }
    if site.organization_id:
        resource["serviceProvider"] = {"reference": f"Organization/{site.organization_id}"}
    return store.create(session, resource).id


def _record_past_visit(
    session: Session,
    site: Site,
    actor: Actor,
    patient_id: str,
    visit: PastVisit,
    location: dict[str, Any],
    *,
    today: date,
    secret: str,
) -> None:
    day = today - timedelta(days=visit.days_ago)
    arrived = datetime.combine(day, datetime.min.time(), tzinfo=local_zone()).replace(hour=8, minute=15)
    encounter_id = _arrived_encounter(session, site, patient_id, arrived, location, queue=3)
    services.start_encounter(session, encounter_id, actor)
    services.record_vitals(session, encounter_id, visit.vitals, actor)
    services.add_diagnosis(session, encounter_id, visit.diagnosis, actor)
    services.save_note(session, encounter_id, {"chief_complaint": visit.complaint}, actor)
    _prescription, plan = services.save_prescription(
        session,
        encounter_id,
        DraftPrescription(visit.lines, visit.days, weight_kg=visit.vitals.weight, advice=visit.advice),
        actor,
        on=day,
    )
    # The demo's drugs raise no warning; were one raised, the reason says it was a demonstration.
    overrides = {warning.key: "Dữ liệu minh hoạ" for warning in plan.warnings}
    sign_encounter(session, encounter_id, actor, overrides=overrides, secret=secret, on=day)


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Give the demo patient two signed visits and put three demo patients in today's queue.

    Does nothing when the demo doctor, patient account or district site is missing, or
    when the demo patient already has a signed prescription (loading twice adds nothing).
    """
    site = sites.get("DIST")
    users = {
        u.username: u for u in session.scalars(select(User).where(User.username.in_(("doctor", "patient"))))
    }
    doctor, patient = users.get("doctor"), users.get("patient")
    if site is None or doctor is None or patient is None or patient.patient_id is None:
        return
    already = session.scalar(
        select(Prescription.id).where(Prescription.patient_id == patient.patient_id).limit(1)
    )
    if already is not None:
        return
    actor = Actor(doctor.id, doctor.username, doctor.full_name, doctor.site_id, doctor.role)
    secret = str(current_app.config["SECRET_KEY"])
    location = _clinic_location(session)
    now = utcnow().astimezone(local_zone())
    for visit in PAST_VISITS:
        _record_past_visit(
            session, site, actor, patient.patient_id, visit, location, today=now.date(), secret=secret
        )
    for queue, name in enumerate(TODAY_QUEUE, start=1):
        patient_id = _patient_id(session, name)
        if patient_id is not None:
            # Checked in a few minutes apart, never before midnight (the worklist shows one day).
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
            arrived = max(midnight, now - timedelta(minutes=5 * (len(TODAY_QUEUE) - queue + 1)))
            _arrived_encounter(session, site, patient_id, arrived, location, queue)


register_demo_loader(load_demo, order=70)
