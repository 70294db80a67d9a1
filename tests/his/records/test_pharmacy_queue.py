"""The pharmacist's queue: signed prescriptions still to dispense at the site, newest first, paged."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from his import audit
from his.db import get_database
from his.errors import ValidationFailed
from his.models import AuditRecord, PatientSiteAccess, Site, User
from his.records import pharmacy, services
from his.records.models import Prescription
from his.records.services import DraftLine, DraftPrescription
from his.records.signatures import sign_encounter
from tests.conftest import login

from .conftest import Visit, actor_of, unit_of_work

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def local_today() -> date:
    return datetime.now(ZONE).date()


@pytest.fixture
def write(app: Flask, make_visit: Callable[..., Visit], make_user: Callable[..., User]) -> Callable[..., str]:
    """Write a prescription for a new patient of a site through the services; return its code."""
    doctors = {
        "DIST": make_user("doctor", username="bsminh", full_name="Lê Văn Minh"),
        "CENT": make_user("doctor", username="bstw", full_name="Trần Quốc Tuấn", site="CENT"),
    }

    def factory(name: str, *, site: str = "DIST", signed_days_ago: int | None = 0) -> str:
        visit = make_visit(name=name, site=site)
        actor = actor_of(doctors[site])
        with unit_of_work(app) as db:
            on = local_today() - timedelta(days=signed_days_ago or 0)
            services.add_diagnosis(db, visit.encounter_id, "J02.9", actor)
            prescription, _plan = services.save_prescription(
                db,
                visit.encounter_id,
                DraftPrescription((DraftLine("VTS0001", "sáng 1 viên, tối 1 viên"),), 3),
                actor,
                on=on,
            )
            code = prescription.code
            if signed_days_ago is not None:
                sign_encounter(
                    db, visit.encounter_id, actor, overrides={}, secret=app.config["SECRET_KEY"], on=on
                )
        return code

    return factory


def _queue_codes(page: str) -> list[str]:
    return re.findall(r'<tr data-code="([^"]+)"', page)


def test_the_queue_lists_what_the_site_may_dispense_now_newest_first(
    app: Flask, client: FlaskClient, write: Callable[..., str], make_user: Callable[..., User]
) -> None:
    first = write("Phạm Thị Hồng")
    second = write("Đỗ Văn Hải")
    draft = write("Ngô Thị Lan", signed_days_ago=None)
    expired = write("Lý Văn Tâm", signed_days_ago=6)
    handed_over = write("Hồ Thị Mai")
    elsewhere = write("Vương Văn Khoa", site="CENT")
    shared = write("Mạc Thị Yến", site="CENT")
    pharmacist = make_user("pharmacist", username="dsha")
    with unit_of_work(app) as db:
        district = db.scalar(select(Site).where(Site.code == "DIST"))
        done = db.scalar(select(Prescription).where(Prescription.code == handed_over))
        state = pharmacy.view(db, done, today=local_today())
        pharmacy.dispense(
            db,
            done,
            {line.item_id: line.quantity for line in state.lines},
            actor_of(pharmacist),
            today=local_today(),
        )
        patient = db.scalar(select(Prescription.patient_id).where(Prescription.code == shared))
        db.add(PatientSiteAccess(patient_id=patient, site_id=district.id, reason="referral"))

    login(client, "dsha")
    page = client.get("/pharmacy/").get_data(as_text=True)

    codes = _queue_codes(page)
    assert codes == [shared, second, first]
    for gone in (draft, expired, handed_over, elsewhere):
        assert gone not in page
    row = page[page.index(f'data-code="{second}"') :]
    row = row[: row.index("</tr>")]
    assert "Đỗ Văn Hải" in row
    assert "Lê Văn Minh" in row
    link = re.search(r'href="([^"]+)"', row)
    assert link is not None
    assert link.group(1) == f"/pharmacy/prescriptions/{second}"
    opened = client.get(link.group(1)).get_data(as_text=True)
    assert 'data-testid="dispense"' in opened  # the same dispensing view as the code search

    with app.app_context():
        audit.flush()
    with get_database(app).session_scope() as db:
        reads = db.scalars(select(AuditRecord).where(AuditRecord.entity_type == "PharmacyQueue")).all()
        assert [(r.action, r.username) for r in reads] == [("read", "dsha")]
        assert all(code in (reads[0].detail or "") for code in codes)


def test_the_queue_is_paged_and_a_bad_page_is_refused(
    app: Flask, client: FlaskClient, write: Callable[..., str], make_user: Callable[..., User]
) -> None:
    codes = [write(name) for name in ("Phạm Thị Hồng", "Đỗ Văn Hải", "Ngô Thị Lan")]
    with unit_of_work(app) as db:
        district = db.scalar(select(Site).where(Site.code == "DIST"))
        pages = [
            pharmacy.waiting(db, district.id, today=local_today(), page=n, per_page=2) for n in (1, 2, 3)
        ]
        with pytest.raises(ValidationFailed) as refused:
            pharmacy.waiting(db, district.id, today=local_today(), page=0)
    assert [[e.code for e in p.entries] for p in pages] == [[codes[2], codes[1]], [codes[0]], []]
    assert {(p.pages, p.total) for p in pages} == {(2, 3)}
    assert refused.value.fields == {"page": "Invalid."}

    make_user("pharmacist", username="dsha")
    login(client, "dsha")
    bad = client.get("/pharmacy/?page=abc")
    assert bad.status_code == 422
    assert _queue_codes(client.get("/pharmacy/?page=2").get_data(as_text=True)) == []


def test_only_a_pharmacist_sees_the_queue_and_only_of_their_site(
    app: Flask, write: Callable[..., str], make_user: Callable[..., User]
) -> None:
    code = write("Phạm Thị Hồng")
    make_user("pharmacist", username="dstw", site="CENT")
    central = app.test_client()
    login(central, "dstw")
    assert code not in central.get("/pharmacy/").get_data(as_text=True)
    doctor = app.test_client()
    login(doctor, "bsminh")
    assert doctor.get("/pharmacy/").status_code == 403
