"""Test that every FHIR interaction becomes an AuditEvent an administrator can search."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from fhir import services
from his import audit
from his.jobs import run_registered_job
from tests.fhir.helpers import FhirClient, patient_body


def test_interactions_become_audit_events_for_admins_only(
    app: Flask, fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    patient = fhir.post("Patient", patient_body()).json
    fhir.get(f"Patient/{patient['id']}")
    outsider = fhir_as("doctor", site="CENT")
    assert outsider.get(f"Patient/{patient['id']}").status_code == 403
    with app.app_context():
        audit.flush()
        run_registered_job("fhir.audit_events")
        run_registered_job("fhir.audit_events")
    admin = fhir_as("admin")
    events = admin.get(f"AuditEvent?patient={patient['id']}&_sort=date&_count=50").json
    subtypes = [(e["resource"]["subtype"][0]["code"], e["resource"]["outcome"]) for e in events["entry"]]
    assert ("create", "0") in subtypes
    assert ("read", "0") in subtypes
    assert ("read", "4") in subtypes
    assert len(subtypes) == len(set(e["resource"]["id"] for e in events["entry"]))
    denied = admin.get("AuditEvent?outcome=4").json
    assert denied["total"] >= 1
    one = denied["entry"][0]["resource"]
    assert one["agent"][0]["role"][0]["text"] == "doctor"
    assert admin.get(f"AuditEvent/{one['id']}").status_code == 200
    assert services.validate(one) == []
    assert fhir_as("doctor").get("AuditEvent").status_code == 403
    assert fhir_as("doctor").post("AuditEvent", one).status_code == 403
