"""Antibiotic use in DDD, the printable prescription and the patient's own page."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from flask import Flask, current_app
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from his.models import Site, User
from his.records import reports, services, signatures
from his.records.catalogue import seed_drugs
from his.records.services import DraftLine, DraftPrescription
from tests.conftest import login

from .conftest import Visit, actor_of, unit_of_work

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def _today() -> date:
    """Return the hospital's day, as the report counts it, when the test runs.

    Not taken at import: a run that crosses midnight in Hà Nội (17:00 UTC) would sign today
    and report on yesterday.
    """
    return datetime.now(ZONE).date()


def test_ddd_follows_who_rules_for_combinations() -> None:
    drugs = seed_drugs()
    assert reports.ddd_count(drugs["VTS0020"], Decimal(15)) == Decimal(5)  # 7.5 g amoxicillin / 1.5 g
    assert reports.ddd_count(drugs["VTS0045"], Decimal(10)) == Decimal("2.5")  # 4.8 g SMX+TMP / 1.92 g
    assert round(reports.ddd_count(drugs["VTS0022"], Decimal(12)), 2) == Decimal(
        "7.00"
    )  # clavulanate left out
    assert reports.ddd_count(drugs["VTS0036"], Decimal(1)) == Decimal(2)  # a 15 ml bottle holds 600 mg
    assert reports.ddd_count(drugs["VTS0001"], Decimal(20)) == 0


def _sign_visit(session: Session, visit: Visit, doctor: User, lines: tuple[DraftLine, ...], icd: str) -> str:
    services.add_diagnosis(session, visit.encounter_id, icd, actor_of(doctor))
    today = _today()
    prescription, plan = services.save_prescription(
        session, visit.encounter_id, DraftPrescription(lines, 5), actor_of(doctor), on=today
    )
    reasons = {w.key: "Đã cân nhắc" for w in plan.warnings}
    signatures.sign_encounter(
        session,
        visit.encounter_id,
        actor_of(doctor),
        overrides=reasons,
        secret=str(current_app.config["SECRET_KEY"]),
        on=today,
    )
    return prescription.code


def test_antibiotic_share_and_ddd_per_thousand_visits(
    app: Flask,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    sites: dict[str, Site],
    client: FlaskClient,
) -> None:
    doctor = make_user("doctor", full_name="Lê Văn Minh")
    first, second = make_visit(name="A"), make_visit(name="B")
    with unit_of_work(app) as session:
        _sign_visit(
            session,
            first,
            doctor,
            (DraftLine("VTS0020", "sáng 1 viên, chiều 1 viên, tối 1 viên"),),
            "J02.9",
        )
        _sign_visit(session, second, doctor, (DraftLine("VTS0001", "sáng 1 viên"),), "R50.9")
    today = _today()
    with unit_of_work(app) as session:
        rows = reports.antibiotic_use(session, sites["DIST"].id, today.replace(day=1), today, ZONE)
    (row,) = rows
    assert (row.doctor, row.visits, row.visits_with_antibiotic) == ("Lê Văn Minh", 2, 1)
    assert row.share == Decimal("50.0")
    assert row.ddd_per_1000 == Decimal("2500.0")
    make_user("manager", username="giamdoc")
    login(client, "giamdoc")
    page = client.get("/records/reports/antibiotics").get_data(as_text=True)
    assert 'data-testid="chart"' in page
    assert "2500,0" in page  # a decimal comma on the Vietnamese page
    assert f"{today.month:02d}/{today.year}" in page  # the month as 11/2026, not 2026-11
    exported = client.get("/records/reports/antibiotics", query_string={"format": "csv"})
    assert exported.mimetype == "text/csv"
    (line,) = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert line["share_percent"] == "50.0"
    assert line["ddd_per_1000_visits"] == "2500.0"


def test_printable_prescription_and_the_patients_page(
    app: Flask, make_visit: Callable[..., Visit], make_user: Callable[..., User], client: FlaskClient
) -> None:
    doctor = make_user("doctor", username="bsminh", full_name="Lê Văn Minh")
    patient = make_user("patient", username="lan")
    visit = make_visit(name="Vũ Thị Lan")
    other = make_visit(name="Người khác")
    with unit_of_work(app) as session:
        code = _sign_visit(
            session,
            visit,
            doctor,
            (DraftLine("VTS0001", "sáng 1 viên, tối 1 viên", "Khi sốt trên 38.5 độ"),),
            "J00",
        )
        session.get(User, patient.id).patient_id = visit.patient_id
    login(client, "bsminh")
    page = client.get(f"/records/prescriptions/{code}/print").get_data(as_text=True)
    for expected in (code, "Vũ Thị Lan", "J00", "Khi sốt trên 38.5 độ", "size: A5"):
        assert expected in page
    own = app.test_client()
    login(own, "lan")
    mine = own.get("/records/my").get_data(as_text=True)
    assert code in mine
    assert "J00" in mine
    assert own.get(f"/records/prescriptions/{code}/qr.svg").status_code == 200
    assert own.get(f"/records/encounters/{other.encounter_id}").status_code == 403
