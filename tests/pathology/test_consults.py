"""Consult cases between sites: who may see them, the worklist's states, and taking a case."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from his.db import get_database
from his.models import AuditRecord, Site
from tests.pathology.helpers import SlideClient, open_case, register_patient


def test_a_case_is_recorded_in_fhir_and_shared_with_the_central_site(
    district: SlideClient, central: SlideClient
) -> None:
    case = open_case(district)

    assert case["status"] == "new"
    assert case["slide_count"] == 1
    request = district.get(f"/fhir/R4/{case['service_request']}").get_json()
    assert request["subject"]["reference"] == f"Patient/{case['patient_id']}"
    assert request["performer"][0]["display"] == "Bệnh viện trung ương"
    assert request["note"][0]["text"] == "Adenocarcinoma? Margins?"
    assert request["specimen"][0]["reference"] == case["specimen"]
    assert request["supportingInfo"][0]["reference"].startswith("ImagingStudy/")
    specimen = district.get(f"/fhir/R4/{case['specimen']}").get_json()
    assert specimen["type"]["text"] == "Colon biopsy"

    slide_id = case["slides"][0]["id"]
    assert central.get(f"/api/v1/cases/{case['id']}").status_code == 200
    assert central.get(f"/api/v1/slides/{slide_id}").status_code == 200
    assert central.get(f"/slides/{slide_id}_files/4/0_0.jpeg").status_code == 200
    assert central.get(f"/api/v1/patients/{case['patient_id']}").status_code == 200


def test_only_the_two_sites_and_their_roles_see_a_case(
    app: Flask, district: SlideClient, slides_as: Callable[..., SlideClient]
) -> None:
    case = open_case(district)
    slide_id = case["slides"][0]["id"]
    with get_database(app).session_scope() as session:
        session.add(Site(code="OTHER", name="Bệnh viện khác", kind="district", facility_code="01999"))
    outsider = slides_as("doctor", "OTHER")
    central_doctor = slides_as("doctor", "CENT")
    district_nurse = slides_as("nurse", "DIST")

    for client in (outsider, central_doctor):
        assert client.get(f"/api/v1/cases/{case['id']}").status_code == 403
        assert client.get(f"/api/v1/slides/{slide_id}").status_code == 403
        assert client.get(f"/slides/{slide_id}.dzi").status_code == 403
    assert district_nurse.get(f"/api/v1/cases/{case['id']}").status_code == 200
    assert district_nurse.get(f"/slides/{slide_id}.dzi").status_code == 200

    with get_database(app).session_scope() as session:
        denied = session.scalars(
            select(AuditRecord).where(
                AuditRecord.outcome == "denied", AuditRecord.entity_id.in_([case["id"], slide_id])
            )
        ).all()
        assert len([r for r in denied if r.entity_type == "PathologyCase"]) == 2
        assert len([r for r in denied if r.entity_type == "Slide"]) == 4


def test_the_worklist_moves_a_case_from_new_to_in_progress_when_taken(
    district: SlideClient, central: SlideClient, slides_as: Callable[..., SlideClient]
) -> None:
    first = open_case(district, "small.svs", "boxes.tiff")
    second = open_case(district, "CMU-1-Small-Region.svs", question="Lymphoma?")

    listed = central.get("/api/v1/cases").get_json()["cases"]
    assert [(c["id"], c["status"], c["slide_count"]) for c in listed] == [
        (first["id"], "new", 2),
        (second["id"], "new", 1),
    ]
    assert all(c["waiting_seconds"] >= 0 for c in listed)

    taken = central.client.post(f"/api/v1/cases/{first['id']}/take", headers=central.headers)
    assert taken.status_code == 200
    assert taken.get_json()["status"] == "in_progress"
    assert taken.get_json()["assigned_to"] == "Test Pathologist"
    assert [c["id"] for c in central.get("/api/v1/cases?status=new").get_json()["cases"]] == [second["id"]]
    assert [c["id"] for c in central.get("/api/v1/cases?status=in_progress").get_json()["cases"]] == [
        first["id"]
    ]

    colleague = slides_as("pathologist", "CENT")
    again = colleague.client.post(f"/api/v1/cases/{first['id']}/take", headers=colleague.headers)
    assert again.status_code == 409
    assert again.get_json()["code"] == "CASE_TAKEN"
    by_district = district.client.post(f"/api/v1/cases/{second['id']}/take", headers=district.headers)
    assert by_district.status_code == 403

    requested = district.get("/api/v1/cases").get_json()["cases"]
    assert {c["id"]: c["status"] for c in requested} == {first["id"]: "in_progress", second["id"]: "new"}


def test_a_case_needs_a_question_and_the_sites_own_slides(
    district: SlideClient, central: SlideClient
) -> None:
    patient_id = register_patient(district)
    theirs = central.upload_file("small.svs").get_json()["id"]
    response = district.client.post(
        "/api/v1/cases",
        json={
            "patient_id": patient_id,
            "receiving_site": "CENT",
            "clinical_question": " ",
            "specimen_type": "Skin",
            "slide_ids": [theirs],
        },
        headers=district.headers,
    )
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) == {"clinical_question"}
    response = district.client.post(
        "/api/v1/cases",
        json={
            "patient_id": patient_id,
            "receiving_site": "CENT",
            "clinical_question": "Melanoma?",
            "specimen_type": "Skin",
            "slide_ids": [theirs],
        },
        headers=district.headers,
    )
    assert response.status_code == 422
    assert response.get_json()["fields"] == {"slide_ids": "Only your site's own slides can be sent."}
    assert central.get("/api/v1/cases").get_json()["cases"] == []
