"""Store HL7's official R4 examples and check responses against the official JSON schema."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.fhir.helpers import DATA, FhirClient, patient_body

EXAMPLES = DATA / "hl7-r4-examples"


def _strip_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.json") if p.name != "bundle-questionnaire.json")


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Load examples without referential integrity: they point at resources HL7 never shipped."""
    return {**settings_overrides, "extra": {"fhir_referential_integrity": False}}


def test_hl7_examples_are_stored_and_read_back_as_sent(fhir: FhirClient) -> None:
    examples = _examples()
    assert len(examples) == 71
    for path in examples:
        text = path.read_text()
        sent = json.loads(text, parse_float=Decimal)
        rtype = sent["resourceType"]
        response = fhir.put(f"{rtype}/{sent['id']}", text) if sent.get("id") else fhir.post(rtype, text)
        assert response.status_code in (200, 201), f"{path.name}: {response.get_data(as_text=True)[:300]}"
        read = fhir.get(f"{rtype}/{response.json['id']}")
        assert read.status_code == 200
        back = json.loads(read.get_data(as_text=True), parse_float=Decimal)
        assert back.pop("id") == response.json["id"]
        sent.pop("id", None)
        assert _strip_meta(back) == _strip_meta(sent), path.name
        if "meta" in sent:
            assert {k: v for k, v in back["meta"].items() if k not in ("versionId", "lastUpdated")} == {
                k: v for k, v in sent["meta"].items() if k not in ("versionId", "lastUpdated")
            }


def test_the_invalid_questionnaire_is_rejected_naming_link_id(fhir: FhirClient) -> None:
    response = fhir.post("Questionnaire", (EXAMPLES / "bundle-questionnaire.json").read_text())
    assert response.status_code == 422
    outcome = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    expressions = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert expressions
    assert all(e.endswith(".linkId") for e in expressions)
    assert "Questionnaire.item[0].item[0].linkId" in expressions
    assert fhir.get("Questionnaire").json["total"] == 0


@cache
def _schema_validator() -> Any:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (it belongs in setup.cfg's dev extra)"
    )
    with gzip.open(DATA / "r4-json-schema" / "fhir.schema.json.gz", "rt", encoding="utf-8") as handle:
        schema = json.load(handle)
    return jsonschema.Draft6Validator(schema)


def _assert_schema_valid(document: Any) -> None:
    errors = sorted(_schema_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]


def test_responses_validate_against_the_official_r4_schema(fhir: FhirClient) -> None:
    created = fhir.post("Patient", patient_body())
    patient = created.json
    observation = fhir.post(
        "Observation",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "valueQuantity": {"value": 72.5, "unit": "/min"},
        },
    ).json
    documents = [
        patient,
        observation,
        fhir.get("Patient?family=nguyen&_include=Patient:organization").json,
        fhir.get(f"Patient/{patient['id']}/_history").json,
        fhir.get(f"Patient/{patient['id']}/$everything").json,
        fhir.post("Patient", patient_body(birthDate="1990-13-01")).json,
        fhir.get("Patient?family=nguyen&shoe-size=1").json,
        fhir.post(
            "",
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "GET", "url": f"Patient/{patient['id']}"}}],
            },
        ).json,
    ]
    for document in documents:
        _assert_schema_valid(document)
