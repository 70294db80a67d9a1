"""The district doctor finds the consult's patient by name, phone, CCCD or BHYT number, among their site's patients only."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from his.db import get_database
from his.models import AuditRecord, User
from tests.conftest import csrf_token, login
from tests.pathology.helpers import SlideClient

BHYT = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"


def signed_in(app: Flask, user: User) -> FlaskClient:
    client = app.test_client()
    assert login(client, user.username).status_code == 302
    return client


def register(client: SlideClient, name: str, phone: str, cccd: str, bhyt: str) -> str:
    """Register a patient through the API, then add the BHYT card number to the Patient resource."""
    created = client.client.post(
        "/api/v1/patients",
        json={
            "full_name": name,
            "birth_date": "1970-05-01",
            "sex": "male",
            "phone": phone,
            "national_id": cccd,
        },
        headers=client.headers,
    )
    assert created.status_code == 201, created.get_json()
    patient_id = str(created.get_json()["id"])
    resource = client.get(f"/fhir/R4/Patient/{patient_id}").get_json()
    resource["identifier"].append({"system": BHYT, "value": bhyt})
    updated = client.client.put(
        f"/fhir/R4/Patient/{patient_id}",
        json=resource,
        headers={**client.headers, "Content-Type": "application/fhir+json"},
    )
    assert updated.status_code == 200, updated.get_json()
    return patient_id


def offered(page: str) -> list[str]:
    return re.findall(r'name="patient_choice" value="([^"]+)"', page)


def test_a_district_doctor_finds_the_patient_and_sends_the_consult_for_them(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> None:
    doctor = make_user("doctor", site="DIST")
    api = SlideClient(app.test_client(), make_token(doctor))
    patient = register(api, "Lê Văn Tám", "0912345678", "001070012345", "DN4010123456789")
    other = register(api, "Lê Thị Hoa", "0987654321", "001070054321", "HC4010987654321")
    elsewhere_doctor = make_user("doctor", site="CENT")
    elsewhere = register(
        SlideClient(app.test_client(), make_token(elsewhere_doctor)),
        "Lê Văn Tám",
        "0900000000",
        "001070099999",
        "DN4019999999999",
    )
    browser = signed_in(app, doctor)

    def search(query: str) -> list[str]:
        page = browser.get("/pathology/cases/new", query_string={"q": query})
        assert page.status_code == 200
        return offered(page.get_data(as_text=True))

    assert search("Văn Tám") == [patient]  # the central site's Lê Văn Tám is not the district's to see
    assert sorted(search("Lê")) == sorted([patient, other])
    assert search("0912 345 678") == [patient]
    assert search("001070012345") == [patient]
    assert search("DN4010123456789") == [patient]
    assert search("0900000000") == []
    assert elsewhere not in search("001070099999")
    none = browser.get("/pathology/cases/new", query_string={"q": "Nguyễn Không Có"}).get_data(as_text=True)
    assert "Không có bệnh nhân nào của cơ sở khớp với tìm kiếm." in none
    short = browser.get("/pathology/cases/new", query_string={"q": "L"})
    assert short.status_code == 422
    assert "Nhập từ 2 đến 100 ký tự của họ tên hoặc số." in short.get_data(as_text=True)
    with get_database(app).session_scope() as session:
        searches = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "search", AuditRecord.entity_type == "Patient")
        ).all()
        assert len(searches) >= 7

    # The doctor picks the patient from the results; no id is typed.
    form = {
        "csrf_token": csrf_token(browser, "/pathology/cases/new"),
        "patient_choice": patient,
        "receiving_site": "CENT",
        "clinical_question": "Viêm hay u?",
        "specimen_type": "Sinh thiết dạ dày",
    }
    unfinished = browser.post("/pathology/cases/new?q=0912345678", data={**form, "clinical_question": ""})
    assert unfinished.status_code == 422  # the chosen patient stays chosen
    assert f'name="patient_choice" value="{patient}" checked' in unfinished.get_data(as_text=True)
    uploaded = api.upload_file("small.svs")
    assert uploaded.status_code == 201
    sent = browser.post(
        "/pathology/cases/new?q=0912345678", data={**form, "slide_ids": uploaded.get_json()["id"]}
    )
    assert sent.status_code == 302, sent.get_data(as_text=True)
    case_id = sent.headers["Location"].rsplit("/", 1)[1]
    assert api.get(f"/api/v1/cases/{case_id}").get_json()["patient_id"] == patient

    # A typed id still works (a patient id read off another system's paper).
    typed = browser.post(
        "/pathology/cases/new",
        data={"csrf_token": csrf_token(browser, "/pathology/cases/new"), "patient_id": patient},
    )
    assert typed.status_code == 422
    assert "Hãy viết câu hỏi lâm sàng cho bác sĩ giải phẫu bệnh." in typed.get_data(as_text=True)
