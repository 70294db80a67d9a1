"""Drive a live server on loopback with real FHIR clients: fhirclient and fhirpy."""

from __future__ import annotations

from typing import Any

import pytest
from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, ResourceNotFound
from flask import Flask

from tests.fhir.helpers import patient_body, system_token

NATIONAL_ID = "http://fhir.ehealth.gov.vn/core/sid/national_id"


@pytest.fixture
def token(app: Flask) -> str:
    return system_token(app)


@pytest.fixture
def smart(live_server: Any, token: str) -> smart_client.FHIRClient:
    """Connect fhirclient to the live server with a bearer token."""
    connection = smart_client.FHIRClient(
        settings={"app_id": "vetinh-tests", "api_base": f"{live_server.url}/fhir/R4/"}
    )
    connection.server.session.headers["Authorization"] = f"Bearer {token}"
    return connection


@pytest.fixture
def fhirpy_client(live_server: Any, token: str) -> SyncFHIRClient:
    return SyncFHIRClient(f"{live_server.url}/fhir/R4", authorization=f"Bearer {token}")


def test_fhirclient_reads_metadata_creates_reads_and_pages(smart: smart_client.FHIRClient) -> None:
    smart.server.get_capability()
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    assert "Patient" in {r.type for r in statement.rest[0].resource}
    ids = []
    for index in range(7):
        patient = Patient(patient_body(name=[{"family": "Phạm", "given": [f"Người{index}"]}], identifier=[]))
        created = patient.create(smart.server)
        assert created is not None
        ids.append(created["id"])
    read = Patient.read(ids[0], smart.server)
    assert read.name[0].family == "Phạm"
    assert read.birthDate.isostring == "1990-04-12"
    observation = Observation(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{ids[0]}"},
            "valueQuantity": {"value": 72.5, "unit": "/min"},
        }
    )
    assert observation.create(smart.server)["subject"]["reference"] == f"Patient/{ids[0]}"
    search = Patient.where(struct={"family": "pham", "_count": "3", "_sort": "given"})
    pages = list(search.perform_iter(smart.server))
    assert [len(page.entry) for page in pages] == [3, 3, 1]
    assert all(isinstance(page, Bundle) for page in pages)
    found = [entry.resource.id for page in pages for entry in page.entry]
    assert found == ids


def test_fhirpy_create_update_conditional_refresh_count_validate_delete(
    fhirpy_client: SyncFHIRClient,
) -> None:
    patient = fhirpy_client.resource("Patient", **patient_body())
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"
    patient["gender"] = "other"
    patient.update()
    assert patient["meta"]["versionId"] == "2"
    # fhirpy maps every 412 to MultipleResourcesFound; here it is the stale If-Match.
    with pytest.raises(MultipleResourcesFound):
        fhirpy_client._do_request(
            "put", f"Patient/{patient.id}", data=patient.serialize(), extra_headers={"If-Match": 'W/"1"'}
        )
    same = fhirpy_client.resource("Patient", **patient_body())
    same.create(identifier=f"{NATIONAL_ID}|001203004567")
    assert same.id == patient.id
    other = fhirpy_client.resource(
        "Patient", **patient_body(identifier=[{"system": NATIONAL_ID, "value": "079090001234"}])
    )
    other.create(identifier=f"{NATIONAL_ID}|079090001234")
    assert other.id != patient.id
    version = patient["meta"]["versionId"]
    patient.refresh()
    assert patient["meta"]["versionId"] == version
    assert fhirpy_client.resources("Patient").count() == 2
    assert fhirpy_client.resources("Patient").search(gender="other").count() == 1
    found = fhirpy_client.resources("Patient").search(identifier=f"{NATIONAL_ID}|079090001234").first()
    assert found is not None
    assert found.id == other.id
    assert patient.is_valid()
    broken = fhirpy_client.resource("Patient", **patient_body(birthDate="12/04/1990"))
    assert not broken.is_valid()
    other.delete()
    with pytest.raises(ResourceNotFound):
        fhirpy_client.reference("Patient", other.id).to_resource()
    assert fhirpy_client.resources("Patient").count() == 1
