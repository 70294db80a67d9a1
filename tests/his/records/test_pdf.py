"""The signed prescription downloads as an A5 PDF whose QR a pharmacy can check offline."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import date

import pytest
import zxingcpp
from flask import Flask
from flask.testing import FlaskClient
from pypdf import PdfReader
from sqlalchemy import select

from his import audit
from his.db import get_database
from his.models import AuditRecord, User
from his.records.models import Prescription
from his.records.pharmacy import check_qr, qr_text
from tests.conftest import login

from .conftest import Visit
from .test_pages import _signed_code, post

A5_POINTS = (419.5, 595.3)


@pytest.fixture
def doctor(make_user: Callable[..., User]) -> User:
    return make_user("doctor", username="bsminh", full_name="Lê Văn Minh")


def read_pdf(data: bytes) -> tuple[str, str, tuple[float, float]]:
    """Return a one-page PDF's text, the text of the QR drawn on it, and its page size in points."""
    page = PdfReader(io.BytesIO(data)).pages[0]
    found = zxingcpp.read_barcodes(page.images[0].image)
    assert [b.format for b in found] == [zxingcpp.BarcodeFormat.QRCode]
    return page.extract_text(), found[0].text, (float(page.mediabox.width), float(page.mediabox.height))


def signed_part(qr: str) -> str:
    """Return a QR's fields without its signature (ECDSA signs differently every time)."""
    return qr.rsplit("|", 1)[0]


def stored_qr(app: Flask, code: str) -> str:
    """Return the signed part of the QR ``qr_text`` makes for the prescription now."""
    with app.app_context(), get_database(app).session_scope() as db:
        prescription = db.scalar(select(Prescription).where(Prescription.code == code))
        return signed_part(qr_text(db, prescription, app.config["SECRET_KEY"]))


def assert_authentic(app: Flask, qr: str, code: str) -> None:
    with app.app_context(), get_database(app).session_scope() as db:
        checked = check_qr(db, qr)
        assert (checked.code, checked.authentic) == (code, True)


def test_the_doctor_downloads_the_signed_prescription_as_an_a5_pdf_with_a_checkable_qr(
    app: Flask, client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit(name="Nguyễn Thị Ánh", sex="female")
    login(client, "bsminh")
    code = _signed_code(client, visit)
    page = client.get(f"/records/encounters/{visit.encounter_id}").get_data(as_text=True)
    assert f'href="/records/prescriptions/{code}.pdf" data-testid="pdf-link"' in page

    response = client.get(f"/records/prescriptions/{code}.pdf")

    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == f'attachment; filename="don-thuoc-{code}.pdf"'
    text, qr, size = read_pdf(response.data)
    assert size == pytest.approx(A5_POINTS, abs=0.5)
    for expected in (
        "ĐƠN THUỐC",
        "Bệnh viện huyện".upper(),
        "01234",
        code,
        "Nguyễn Thị Ánh",
        "Giới tính: Nữ",
        "Thôn 1, xã Vệ Tinh",
        "Rung nhĩ và cuồng nhĩ (I48)",
        "1. Warfarin 2 mg",
        "2. Aspirin 81 mg",
        "SL: 10 viên",
        "tối 1 viên",
        "sau ăn",
        "Lê Văn Minh",
        "Đã ký số lúc",
    ):
        assert expected in text, expected
    assert re.search(r"Tuổi: \d+ tuổi", text)
    assert signed_part(qr) == stored_qr(app, code)
    assert_authentic(app, qr, code)
    with app.app_context():
        audit.flush()
    with get_database(app).session_scope() as db:
        reads = db.scalars(
            select(AuditRecord).where(AuditRecord.entity_id == code, AuditRecord.detail == "pdf")
        ).all()
        assert [(r.action, r.outcome, r.username) for r in reads] == [("read", "success", "bsminh")]


def test_a_child_s_pdf_gives_age_in_months_weight_and_the_accompanying_adult(
    client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> None:
    today = date.today()
    visit = make_visit(name="Lê Minh Khôi", birth_date=today.replace(year=today.year - 3, day=1))
    login(client, "bsminh")
    base = f"/records/encounters/{visit.encounter_id}"
    assert post(client, f"{base}/diagnoses", {"icd10": "J00"}, base).status_code == 303
    saved = post(
        client,
        f"{base}/prescription",
        {
            "drug": ["VTS0002"],
            "dosage": ["sáng 1 gói, tối 1 gói"],
            "days": "3",
            "weight": "14",
            "guardian_name": "Lê Thị Mai",
            "advice": "Uống nhiều nước",
            "follow_up": today.replace(year=today.year + 1).isoformat(),
        },
        base,
    )
    assert saved.status_code == 303
    code = re.search(r'data-testid="prescription-code">([^<]+)<', client.get(base).get_data(as_text=True))
    assert code is not None
    unsigned = client.get(f"/records/prescriptions/{code.group(1)}.pdf")
    assert unsigned.status_code == 409
    assert unsigned.mimetype == "text/html"
    reasons = {
        f"reason:{key}": "Đã cân nhắc"
        for key in re.findall(r'name="reason:([^"]+)"', client.get(base).get_data(as_text=True))
    }
    assert post(client, f"{base}/sign", reasons, base).status_code == 303

    text, _qr, _size = read_pdf(client.get(f"/records/prescriptions/{code.group(1)}.pdf").data)

    assert "Tuổi: 36 tháng" in text
    assert "Cân nặng: 14 kg" in text
    assert "Người đưa trẻ đến khám: Lê Thị Mai" in text
    assert "Lời dặn: Uống nhiều nước" in text
    assert "Hẹn tái khám: " + today.replace(year=today.year + 1).strftime("%d/%m/%Y") in text
    assert "Uống: sáng 1 gói, tối 1 gói" in text


def test_the_patient_and_a_linked_parent_download_it_other_patients_and_roles_get_403_audited(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    make_token: Callable[..., str],
    doctor: User,
) -> None:
    visit = make_visit(name="Nguyễn Văn An")
    login(client, "bsminh")
    code = _signed_code(client, visit)
    path = f"/records/prescriptions/{code}.pdf"
    other_visit = make_visit(name="Trần Thị Bích", queue=2)
    owner = make_user("patient", username="an", patient_id=visit.patient_id)
    stranger = make_user("patient", username="bich", patient_id=other_visit.patient_id)
    parent = make_user("patient", username="me")
    make_user("cashier", username="thungan")
    with get_database(app).session_scope() as db:
        from his.models import PatientLink

        db.add(PatientLink(user_id=parent.id, patient_id=visit.patient_id))

    mine = app.test_client()
    login(mine, "an")
    my_page = mine.get("/records/my").get_data(as_text=True)
    assert f'href="{path}" data-testid="pdf-link"' in my_page
    own = mine.get(path)
    assert own.status_code == 200
    text, qr, _size = read_pdf(own.data)
    assert "Nguyễn Văn An" in text
    assert signed_part(qr) == stored_qr(app, code)
    by_token = app.test_client().get(path, headers={"Authorization": f"Bearer {make_token(owner)}"})
    assert by_token.status_code == 200
    assert by_token.data[:5] == b"%PDF-"
    linked = app.test_client()
    login(linked, "me")
    assert linked.get(path).status_code == 200

    other = app.test_client()
    login(other, "bich")
    assert other.get(path).status_code == 403
    assert (
        app.test_client().get(path, headers={"Authorization": f"Bearer {make_token(stranger)}"}).status_code
        == 403
    )
    counter = app.test_client()
    login(counter, "thungan")
    assert counter.get(path).status_code == 403
    with app.app_context():
        audit.flush()
    with get_database(app).session_scope() as db:
        denied = db.scalars(
            select(AuditRecord).where(
                AuditRecord.outcome == "denied", AuditRecord.patient_id == visit.patient_id
            )
        ).all()
        assert sorted(d.username for d in denied) == ["bich", "bich", "thungan"]


def test_a_pharmacist_of_the_site_downloads_it_from_the_pharmacy_page(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    doctor: User,
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    code = _signed_code(client, visit)
    make_user("pharmacist", username="dsha")
    pharmacist = app.test_client()
    login(pharmacist, "dsha")
    page = pharmacist.get(f"/pharmacy/prescriptions/{code}").get_data(as_text=True)
    link = re.search(r'href="([^"]+)" data-testid="pdf-link"', page)
    assert link is not None
    text, qr, _size = read_pdf(pharmacist.get(link.group(1)).data)
    assert code in text
    assert_authentic(app, qr, code)
    printed = pharmacist.get(f"/records/prescriptions/{code}/print").get_data(as_text=True)
    assert f'href="{link.group(1)}" data-testid="pdf-link"' in printed
    make_user("pharmacist", username="dstw", site="CENT")
    elsewhere = app.test_client()
    login(elsewhere, "dstw")
    assert elsewhere.get(link.group(1)).status_code == 403
