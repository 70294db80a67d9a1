"""Test Bulk Data $export: asynchronous kick-off, a job that writes NDJSON, status, cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask

from his.jobs import run_registered_job
from tests.fhir.helpers import FhirClient, patient_body


def _path(url: str) -> str:
    return urlsplit(url).path.removeprefix("/fhir/R4/") + (
        f"?{urlsplit(url).query}" if urlsplit(url).query else ""
    )


def _seed(fhir: FhirClient) -> str:
    patient = fhir.post("Patient", patient_body()).json
    fhir.post("Patient", patient_body(name=[{"family": "Trần"}]))
    for value in (72.5, 80):
        fhir.post(
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{patient['id']}"},
                "valueQuantity": {"value": value, "unit": "/min"},
            },
        )
    fhir.post("Organization", {"resourceType": "Organization", "name": "BV\nhuyện"})
    return str(patient["id"])


def test_system_export_runs_as_a_job_and_serves_ndjson(app: Flask, fhir: FhirClient) -> None:
    _seed(fhir)
    assert fhir.get("$export").status_code == 400
    kick = fhir.get("$export", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith("http://localhost/fhir/R4/$export-status/")
    waiting = fhir.get(_path(status_url))
    assert waiting.status_code == 202
    with app.app_context():
        run_registered_job("fhir.bulk_export")
    done = fhir.get(_path(status_url))
    assert done.status_code == 200
    manifest = done.json
    assert manifest["requiresAccessToken"] is True
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts == {"Observation": 2, "Organization": 1, "Patient": 2}
    for output in manifest["output"]:
        response = fhir.get(_path(output["url"]))
        assert response.status_code == 200
        assert response.mimetype == "application/fhir+ndjson"
        lines = response.get_data(as_text=True).splitlines()
        assert len(lines) == output["count"]
        assert {json.loads(line)["resourceType"] for line in lines} == {output["type"]}
    observations = fhir.get(_path(next(o["url"] for o in manifest["output"] if o["type"] == "Observation")))
    assert '"value":72.5' in observations.get_data(as_text=True).replace(" ", "")
    with app.app_context():
        run_registered_job("fhir.bulk_export")
    assert fhir.get(_path(status_url)).status_code == 200


def test_patient_export_with_types_and_cancel(
    app: Flask, fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    _seed(fhir)
    kick = fhir.get("Patient/$export?_type=Observation,Patient", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    status = _path(kick.headers["Content-Location"])
    assert fhir_as("doctor").get(status).status_code == 404
    with app.app_context():
        run_registered_job("fhir.bulk_export")
    manifest = fhir.get(status).json
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Observation": 2, "Patient": 2}
    assert fhir.delete(status).status_code == 202
    assert fhir.get(status).status_code == 404
    cancelled = fhir.get("$export", headers={"Prefer": "respond-async"})
    assert fhir.delete(_path(cancelled.headers["Content-Location"])).status_code == 202
    with app.app_context():
        run_registered_job("fhir.bulk_export")
    assert fhir.get(_path(cancelled.headers["Content-Location"])).status_code == 404


def test_export_needs_a_system_token(fhir_as: Callable[..., FhirClient], fhir: FhirClient) -> None:
    doctor = fhir_as("doctor")
    assert doctor.get("$export", headers={"Prefer": "respond-async"}).status_code == 403
    assert fhir.get("$export?_outputFormat=text/csv", headers={"Prefer": "respond-async"}).status_code == 400
    assert fhir.get("$export?_type=Nope", headers={"Prefer": "respond-async"}).status_code == 404
