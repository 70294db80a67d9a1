"""Test the pure parts: date ranges, string folding, reference parsing, exact JSON stamping."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from fhir import jsontext
from fhir.searchparams import date_range, normalize_string, params_for, parse_reference, walk
from fhir.validation import validate_resource


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2024", datetime(2024, 1, 1), datetime(2024, 12, 31, 23, 59, 59, 999999)),
        ("2024-02", datetime(2024, 2, 1), datetime(2024, 2, 29, 23, 59, 59, 999999)),
        ("2024-12-31", datetime(2024, 12, 31), datetime(2024, 12, 31, 23, 59, 59, 999999)),
        ("2024-03-05T08:30:00+07:00", datetime(2024, 3, 5, 1, 30), datetime(2024, 3, 5, 1, 30, 0, 999999)),
        ("2024-03-05T08:30Z", datetime(2024, 3, 5, 8, 30), datetime(2024, 3, 5, 8, 30, 59, 999999)),
        (
            "2024-03-05T08:30:00.123Z",
            datetime(2024, 3, 5, 8, 30, 0, 123000),
            datetime(2024, 3, 5, 8, 30, 0, 123000),
        ),
    ],
)
def test_dates_stand_for_the_range_of_their_precision(value: str, start: datetime, end: datetime) -> None:
    assert date_range(value) == (start, end)


@pytest.mark.parametrize("value", ["2024-13", "20240101", "2024-01-01T25:00", "yesterday", ""])
def test_malformed_dates_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="FHIR date"):
        date_range(value)


def test_strings_fold_vietnamese_accents_and_case() -> None:
    assert normalize_string("  Nguyễn   Thị Đào ") == "nguyen thi dao"
    assert normalize_string("ĐỨC") == "duc"


def test_references_split_into_type_id_or_url() -> None:
    assert parse_reference("Patient/123") == ("Patient", "123", None)
    assert parse_reference("Patient/123/_history/2") == ("Patient", "123", None)
    assert parse_reference("http://other.org/fhir/Patient/1") == (
        None,
        None,
        "http://other.org/fhir/Patient/1",
    )
    assert parse_reference("#contained") == (None, None, None)
    assert parse_reference("urn:uuid:abc") == (None, None, "urn:uuid:abc")


def test_paths_walk_choices_filters_and_lists() -> None:
    observation = {"effectiveDateTime": "2024", "valueQuantity": {"value": 1}}
    assert list(walk(observation, "effective[x]")) == ["2024"]
    patient = {"telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]}
    assert list(walk(patient, "telecom(system=phone).value")) == ["1"]
    assert {"identifier", "name", "family", "given", "birthdate", "gender", "phone", "email"} <= set(
        params_for("Patient")
    )


def test_stamping_keeps_every_other_byte() -> None:
    text = '{\n  "resourceType" : "Observation",\n  "valueQuantity" : { "value" : 1.50 },\n  "issued": "2024-03-05T08:30:00.000+07:00"\n}'
    stamped = jsontext.stamp(
        text, jsontext.loads(text), "obs-1", {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    )
    assert (
        stamped.replace(',"id":"obs-1","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"}', "")
        == text
    )
    again = jsontext.stamp(stamped, jsontext.loads(stamped), "obs-1", {"versionId": "2"})
    assert '"meta":{"versionId":"2"}' in again
    assert '"value" : 1.50' in again
    assert jsontext.dumps(jsontext.loads('{"a":[1.50,1e3,-0.0,"Việt"]}')) == '{"a":[1.50,1E+3,-0.0,"Việt"]}'


def test_validation_finds_nulls_everywhere_and_references_outside_contained() -> None:
    """One walk does both: nulls anywhere (contained too), references of the resource itself."""
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Mạch"},
        "subject": {"reference": "Patient/1"},
        "performer": [{"display": "Bác sĩ"}, {"reference": "Practitioner/2"}],
        "contained": [
            {
                "resourceType": "Patient",
                "id": "c",
                "link": [{"other": {"reference": "Patient/9"}, "type": "seealso"}],
            }
        ],
    }
    references: list[tuple[str, dict[str, Any]]] = []
    assert validate_resource(resource, "Bundle.entry[2].resource", references=references) == []
    assert [(path, ref["reference"]) for path, ref in references] == [
        ("Bundle.entry[2].resource.subject.reference", "Patient/1"),
        ("Bundle.entry[2].resource.performer[1].reference", "Practitioner/2"),
    ]
    assert references[0][1] is resource["subject"]
    resource["contained"][0]["gender"] = None
    resource["performer"][0]["display"] = None
    issues = validate_resource(resource)
    assert [i["expression"] for i in issues] == [
        ["Observation.performer[0].display"],
        ["Observation.contained[0].gender"],
    ]
