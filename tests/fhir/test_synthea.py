"""Load Synthea's bundles through the API: batches, transactions, counts and $everything."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.fhir.helpers import DATA, FhirClient

SYNTHEA = DATA / "synthea"
EXAMPLES = DATA / "hl7-r4-examples"


def _bundles() -> tuple[list[Path], list[Path]]:
    directory = sorted(SYNTHEA.glob("0-*.json"))
    patients = sorted(p for p in SYNTHEA.glob("*.json") if not p.name.startswith("0-"))
    return directory, patients


def test_synthea_bundles_load_with_matching_counts_and_everything(fhir: FhirClient) -> None:
    directory, patients = _bundles()
    assert len(directory) == 2
    assert len(patients) == 10
    expected: Counter[str] = Counter()
    for path in directory:
        bundle = json.loads(path.read_text())
        response = fhir.post("", path.read_text())
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        statuses = Counter(e["response"]["status"] for e in response.json["entry"])
        assert statuses == Counter({"201 Created": len(bundle["entry"])})
        expected.update(e["resource"]["resourceType"] for e in bundle["entry"])
    again = fhir.post("", directory[0].read_text()).json
    assert {e["response"]["status"] for e in again["entry"]} == {"200 OK"}
    members: dict[str, set[tuple[str, str]]] = {}
    for path in patients:
        bundle = json.loads(path.read_text())
        response = fhir.post("", path.read_text())
        assert response.status_code == 200, f"{path.name}: {response.get_data(as_text=True)[:500]}"
        entries = response.json["entry"]
        assert len(entries) == len(bundle["entry"])
        assert all(e["response"]["status"] == "201 Created" for e in entries)
        expected.update(e["resource"]["resourceType"] for e in bundle["entry"])
        created = {tuple(e["response"]["location"].split("/")[:2]) for e in entries}
        patient_id = next(i for t, i in created if t == "Patient")
        members[patient_id] = created  # type: ignore[assignment]
        sent = bundle["entry"][1]["resource"]
        stored = entries[1]["resource"]
        assert stored["period"] == sent["period"]
        assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    for rtype, count in expected.items():
        found = fhir.get(f"{rtype}?_summary=count").json["total"]
        assert found == count, f"{rtype}: {found} stored, {count} sent"
    for patient_id, created in members.items():
        everything = fhir.get(f"Patient/{patient_id}/$everything").json
        returned = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in everything["entry"]}
        assert created <= returned, f"{patient_id}: missing {sorted(created - returned)[:5]}"
        assert everything["total"] == len(returned)
        assert {rtype for rtype, _ in returned - created} <= {
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "Location",
        }
