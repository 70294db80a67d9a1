"""The records pages speak the reader's language: no LOINC titles, UCUM units, field keys or ISO dates."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from his.models import User
from tests.conftest import login

from .conftest import Visit
from .test_pages import post


def _in(client: FlaskClient, locale: str) -> FlaskClient:
    with client.session_transaction() as session:
        session["locale"] = locale
    return client


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.split("<main", 1)[-1]))


def _signed_visit(client: FlaskClient, visit: Visit) -> str:
    base = f"/records/encounters/{visit.encounter_id}"
    vitals = {"systolic": "152", "diastolic": "94", "pulse": "82", "temperature": "36,8"}
    assert (
        post(client, f"{base}/vitals", {**vitals, "weight": "68", "height": "168"}, base).status_code == 303
    )
    assert post(client, f"{base}/note", {"chief_complaint": "Đau đầu buổi sáng"}, base).status_code == 303
    assert post(client, f"{base}/diagnoses", {"icd10": "I10"}, base).status_code == 303
    drug = {"drug": ["VTS0072"], "dosage": ["sáng 1 viên"], "line_note": [""], "days": "30"}
    assert post(client, f"{base}/prescription", drug, base).status_code == 303
    assert post(client, f"{base}/sign", {}, base).status_code == 303
    return base


def test_a_signed_encounter_reads_in_vietnamese_and_in_english(
    client: FlaskClient, make_visit: Callable[..., Visit], make_user: Callable[..., User]
) -> None:
    make_user("doctor", username="bsminh", full_name="Lê Văn Minh")
    visit = make_visit(name="Phạm Thị Hồng")
    login(client, "bsminh")
    base = _signed_visit(client, visit)

    vietnamese = _text(_in(client, "vi").get(base).get_data(as_text=True))
    for shown in ("Sinh ngày 14/03/1975", "Huyết áp 152/94 mmHg", "Mạch 82 lần/phút", "Nhiệt độ 36,8 °C"):
        assert shown in vietnamese
    assert "BMI 24,1 kg/m²" in vietnamese
    assert "Lý do khám Đau đầu buổi sáng" in vietnamese
    assert "Tăng huyết áp vô căn (nguyên phát)" in vietnamese
    for raw in ("Body temperature", "Heart rate", "Blood pressure panel", "Cel", "/min", "chief_complaint"):
        assert raw not in vietnamese, raw
    assert "Provenance" not in vietnamese
    assert "1975-03-14" not in vietnamese

    english = _text(_in(client, "en").get(base).get_data(as_text=True))
    for shown in ("Born 14/03/1975", "Blood pressure 152/94 mmHg", "Pulse 82 /min", "Temperature 36.8 °C"):
        assert shown in english
    assert "Chief complaint Đau đầu buổi sáng" in english
    assert "Essential (primary) hypertension" in english
    assert "Tăng huyết áp" not in english


def test_the_pharmacist_sees_the_signer_s_name_and_a_local_birth_date(
    app: Flask, client: FlaskClient, make_visit: Callable[..., Visit], make_user: Callable[..., User]
) -> None:
    make_user("doctor", username="bsminh", full_name="Lê Văn Minh")
    login(client, "bsminh")
    _signed_visit(client, make_visit(name="Phạm Thị Hồng"))
    make_user("pharmacist", username="dsha")
    pharmacist = app.test_client()
    login(pharmacist, "dsha")
    queue = pharmacist.get("/pharmacy/").get_data(as_text=True)
    code = re.search(r'data-code="([^"]+)"', queue).group(1)
    page = _text(pharmacist.get(f"/pharmacy/prescriptions/{code}").get_data(as_text=True))
    assert "Sinh ngày 14/03/1975" in page
    assert "Hợp lệ, do Lê Văn Minh (bsminh), Bệnh viện huyện ký" in page
    assert "CN=" not in page
