"""A slide uploaded for a patient is recorded in the FHIR store as an ImagingStudy (modality SM)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests.pathology.helpers import SlideClient, stored_files


def register_patient(client: SlideClient) -> str:
    response = client.client.post(
        "/api/v1/patients",
        json={"full_name": "Trần Thị Bình", "birth_date": "1968-04-02", "sex": "female"},
        headers=client.headers,
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def test_a_slide_of_a_patient_becomes_an_imaging_study(district: SlideClient) -> None:
    patient_id = register_patient(district)

    body = district.upload_file("CMU-1-Small-Region.svs", patient_id=patient_id).get_json()

    assert body["imaging_study"].startswith("ImagingStudy/")
    study = district.get(f"/fhir/R4/{body['imaging_study']}")
    assert study.status_code == 200, study.get_json()
    resource = study.get_json()
    assert resource["modality"][0]["code"] == "SM"
    assert resource["subject"]["reference"] == f"Patient/{patient_id}"
    assert resource["identifier"][0]["value"] == body["id"]
    assert resource["started"].startswith("2009-12-29")


def test_a_patient_of_another_site_cannot_be_given_a_slide(
    app: Flask, slides_as: Callable[..., SlideClient], district: SlideClient
) -> None:
    patient_id = register_patient(district)
    central = slides_as("pathologist", "CENT")

    response = central.upload_file("small.svs", patient_id=patient_id)

    assert response.status_code == 403
    assert stored_files(app) == []


def test_an_unknown_patient_leaves_no_slide_behind(app: Flask, district: SlideClient) -> None:
    response = district.upload_file("small.svs", patient_id="no-such-patient")

    assert response.status_code in (403, 422)
    assert stored_files(app) == []
