"""Recording an encounter through the FHIR store: worklist, vitals, diagnoses, allergies, orders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from fhir import services as store
from his.errors import Conflict, ValidationFailed
from his.models import Site, User
from his.records import services
from his.records.services import Vitals

from .conftest import Visit, actor_of

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def doctor(make_user: Callable[..., User]) -> User:
    return make_user("doctor", full_name="Lê Văn Minh")


def test_worklist_lists_todays_checked_in_patients_of_the_site_in_queue_order(
    session: Session, make_visit: Callable[..., Visit], sites: dict[str, Site]
) -> None:
    third = make_visit(name="Trần Thị Ba", queue=3)
    second = make_visit(name="Đặt Lịch Hai", queue=2, clinic="Phòng khám Nội 1")
    first = make_visit(name="Lê Văn Một", queue=1)
    make_visit(name="Ở Trung Ương", site="CENT", queue=2)
    site = session.get(Site, sites["DIST"].id)
    today = datetime.now(ZONE).date()
    entries = services.worklist(session, site, today, ZONE)
    assert [(e.patient_name, e.queue_number, e.clinic) for e in entries] == [
        ("Lê Văn Một", 1, ""),
        ("Đặt Lịch Hai", 2, "Phòng khám Nội 1"),
        ("Trần Thị Ba", 3, ""),
    ]
    assert entries[0].encounter_id == first.encounter_id
    assert entries[2].patient_id == third.patient_id
    clinic = store.read(session, "Encounter", second.encounter_id).resource["location"][0]["location"][
        "reference"
    ]
    only_clinic = services.worklist(session, site, today, ZONE, location_id=clinic.split("/")[1])
    assert [e.patient_name for e in only_clinic] == ["Đặt Lịch Hai"]
    assert services.worklist(session, site, today.replace(year=today.year - 1), ZONE) == []


def _vitals_become_loinc_observations_with_bmi(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    services.start_encounter(session, visit.encounter_id, actor_of(doctor))
    ids = services.record_vitals(
        session,
        visit.encounter_id,
        Vitals(
            systolic=Decimal(150),
            diastolic=Decimal(95),
            pulse=Decimal(82),
            temperature=Decimal("37.2"),
            respiratory_rate=Decimal(18),
            spo2=Decimal(97),
            weight=Decimal(70),
            height=Decimal(170),
        ),
        actor_of(doctor),
    )
    assert len(ids) == 8
    record = services.encounter_record(session, visit.encounter_id)
    codes = {o["code"]["coding"][0]["code"]: o for o in record.observations}
    assert set(codes) == {"85354-9", "8867-4", "8310-5", "9279-1", "59408-5", "29463-7", "8302-2", "39156-5"}
    assert codes["39156-5"]["valueQuantity"]["value"] == Decimal("24.2")
    bp = codes["85354-9"]["component"]
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in bp] == [
        ("8480-6", 150),
        ("8462-4", 95),
    ]
    assert record.encounter.status == "in-progress"


def _implausible_vitals_are_refused_by_field(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    with pytest.raises(ValidationFailed) as caught:
        services.record_vitals(
            session,
            visit.encounter_id,
            Vitals(temperature=Decimal(62), systolic=Decimal(80), diastolic=Decimal(90)),
            actor_of(doctor),
        )
    assert set(caught.value.fields) == {"temperature", "diastolic"}
    assert services.encounter_record(session, visit.encounter_id).observations == []


def _diagnoses_are_icd10_conditions_and_unknown_codes_are_refused(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    services.add_diagnosis(session, visit.encounter_id, "i10", actor_of(doctor))
    services.add_diagnosis(session, visit.encounter_id, "E11.9", actor_of(doctor))
    with pytest.raises(ValidationFailed):
        services.add_diagnosis(session, visit.encounter_id, "X99.9", actor_of(doctor))
    with pytest.raises(Conflict):
        services.add_diagnosis(session, visit.encounter_id, "I10", actor_of(doctor))
    found = store.search(session, "Condition", [("code", "http://hl7.org/fhir/sid/icd-10|I10")])
    assert [m.resource["code"]["text"] for m in found.matches] == ["Tăng huyết áp vô căn (nguyên phát)"]


def _allergies_orders_and_note_are_recorded(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    actor = actor_of(doctor)
    services.add_allergy(session, visit.encounter_id, "Penicillin", actor, reaction="Mày đay")
    services.add_allergy(session, visit.encounter_id, "ibuprofen", actor)
    with pytest.raises(ValidationFailed):
        services.add_allergy(session, visit.encounter_id, "nước mắm", actor)
    services.add_order(session, visit.encounter_id, "lab", "Công thức máu", actor)
    services.add_order(session, visit.encounter_id, "imaging", "X-quang ngực thẳng", actor)
    with pytest.raises(ValidationFailed):
        services.add_order(session, visit.encounter_id, "dance", "", actor)
    services.save_note(
        session, visit.encounter_id, {"chief_complaint": "Đau đầu 3 ngày", "examination": "Tỉnh <táo>"}, actor
    )
    services.save_note(session, visit.encounter_id, {"chief_complaint": "Đau đầu 2 ngày"}, actor)
    assert {a.key for a in services.patient_allergies(session, visit.patient_id)} == {
        "class:penicillin",
        "ibuprofen",
    }
    record = services.encounter_record(session, visit.encounter_id)
    assert sorted(o["code"]["text"] for o in record.orders) == ["Công thức máu", "X-quang ngực thẳng"]
    assert record.note == {"chief_complaint": "Đau đầu 2 ngày"}
    everything, _total = store.everything(session, visit.patient_id)
    assert {"AllergyIntolerance", "ServiceRequest", "Composition", "Encounter"} <= {
        r.type for r in everything
    }


def _past_encounters_show_earlier_diagnoses(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    services.add_diagnosis(session, visit.encounter_id, "J02.9", actor_of(doctor))
    later = store.create(
        session,
        {
            "resourceType": "Encounter",
            "status": "arrived",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{visit.patient_id}"},
            "period": {"start": "2099-01-01T08:00:00+07:00"},
        },
    )
    visits = services.past_encounters(session, visit.patient_id, exclude=later.id)
    assert [v["diagnoses"] for v in visits] == [["J02.9 Viêm họng cấp"]]


def test_recording_an_encounter_goes_through_the_fhir_store(
    session: Session,
    make_visit: Callable[..., Visit],
    doctor: User,
) -> None:
    """Vitals, diagnoses, allergies, orders, notes and history (one app for the lot, to keep the suite fast)."""
    _vitals_become_loinc_observations_with_bmi(session, make_visit, doctor)
    session.commit()
    _implausible_vitals_are_refused_by_field(session, make_visit, doctor)
    session.commit()
    _diagnoses_are_icd10_conditions_and_unknown_codes_are_refused(session, make_visit, doctor)
    session.commit()
    _allergies_orders_and_note_are_recorded(session, make_visit, doctor)
    session.commit()
    _past_encounters_show_earlier_diagnoses(session, make_visit, doctor)
    session.commit()
