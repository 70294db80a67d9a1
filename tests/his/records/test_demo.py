"""The demo has records to show: the patient's signed visits, a prescription to dispense, today's queue."""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from flask import Flask
from sqlalchemy import select

from his import demo
from his.cli import main
from his.db import get_database
from his.records.demo import load_demo
from his.records.models import Prescription
from tests.conftest import csrf_token, login

PASSWORD = "demo-pass-123"


def _load(app: Flask) -> None:
    result = app.test_cli_runner().invoke(main, ["demo", "--if-empty", "--password", PASSWORD])
    assert result.exit_code == 0, result.output


def test_the_demo_gives_every_role_records_to_work_with(app: Flask, test_database: object) -> None:
    assert load_demo in [loader for _order, loader in demo._LOADERS]
    _load(app)

    doctor = app.test_client()
    login(doctor, "doctor", PASSWORD)
    worklist = doctor.get("/records/").get_data(as_text=True)
    names = ["Trần Thị Bình", "Lê Hoàng Cường", "Võ Minh Đức"]
    positions = [worklist.find(name) for name in names]
    assert all(p > 0 for p in positions), worklist
    assert positions == sorted(positions)  # in queue order
    assert "Phòng khám Nội 3" in worklist

    patient = app.test_client()
    login(patient, "patient", PASSWORD)
    mine = patient.get("/records/my").get_data(as_text=True)
    assert "I10" in mine  # the visit weeks ago
    assert "J02.0" in mine  # yesterday's, with the antibiotic
    assert len(re.findall(r'data-testid="my-prescription"', mine)) == 2
    visits = mine[
        mine.index('data-testid="visits"') : mine.index("</ul>", mine.index('data-testid="visits"'))
    ]
    days = [date(int(y), int(m), int(d)) for d, m, y in re.findall(r"<li>(\d\d)/(\d\d)/(\d{4})", visits)]
    assert len(days) >= 2
    assert days == sorted(days, reverse=True)  # newest visit first
    pdf_links = re.findall(r'href="([^"]+)" data-testid="pdf-link"', mine)
    assert len(pdf_links) == 2
    pdf = patient.get(pdf_links[0])
    assert pdf.status_code == 200
    assert pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF")

    with get_database(app).session_scope() as db:
        prescriptions = db.scalars(select(Prescription).order_by(Prescription.signed_at.desc())).all()
        assert [p.status for p in prescriptions] == ["signed", "signed"]
        recent = max(prescriptions, key=lambda p: p.valid_until or p.created_at.date())
        code = recent.code

    pharmacist = app.test_client()
    login(pharmacist, "pharmacist", PASSWORD)
    found = pharmacist.get(f"/pharmacy/?q={code}")
    assert found.status_code == 302
    page = pharmacist.get(found.headers["Location"]).get_data(as_text=True)
    assert "Nguyễn Văn An" in page
    assert 'data-valid="yes"' in page  # the demo signature verifies
    assert 'data-testid="dispense"' in page
    quantities = dict(re.findall(r'name="(qty:\d+)"[^>]*value="(\d+)"', page))
    assert quantities, page
    dispensed = pharmacist.post(
        f"/pharmacy/prescriptions/{code}/dispense",
        data={**quantities, "csrf_token": csrf_token(pharmacist, f"/pharmacy/prescriptions/{code}")},
    )
    assert dispensed.status_code == 303
    after = pharmacist.get(dispensed.headers["Location"]).get_data(as_text=True)
    assert 'data-testid="dispensed-ok"' in after

    manager = app.test_client()
    login(manager, "manager", PASSWORD)
    report = manager.get("/records/reports/antibiotics?format=csv").get_data(as_text=True)
    rows = [row for row in csv.DictReader(io.StringIO(report)) if row["doctor"] == "Lê Văn Minh"]
    assert sum(int(row["visits"]) for row in rows) == 2
    assert sum(int(row["visits_with_antibiotic"]) for row in rows) == 1
