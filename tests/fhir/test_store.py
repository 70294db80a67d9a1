"""Test the store's service API: versions, exact JSON, search semantics and bundles."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fhir import services
from fhir.models import INDEX_TABLES, FhirIndexString, FhirResource, FhirResourceHistory
from his.errors import BadRequest, Conflict, Gone, NotFound, PreconditionFailed, ValidationFailed
from tests.fhir.helpers import patient_body


def _observation(patient_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-03-05T08:30:00+07:00",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    body.update(changes)
    return body


def _ids(result: services.SearchResult) -> list[str]:
    return [m.id for m in result.matches]


def test_create_keeps_the_accepted_text_and_sets_only_meta(db: Session) -> None:
    text = (
        '{"resourceType": "Patient", "meta": {"profile": ["http://example.org/p"]},\n'
        ' "birthDate": "1990-04-12", "extension": [{"url": "http://example.org/w", "valueDecimal": 1.50}]}'
    )
    stored = services.create(db, text)
    assert stored.version_id == 1
    assert '"valueDecimal": 1.50' in stored.text
    assert '"birthDate": "1990-04-12"' in stored.text
    again = services.read(db, "Patient", stored.id)
    assert again.text == stored.text
    resource = json.loads(again.text)
    assert resource["id"] == stored.id
    assert resource["meta"]["versionId"] == "1"
    assert resource["meta"]["profile"] == ["http://example.org/p"]
    assert resource["meta"]["lastUpdated"].endswith("Z")


def test_every_write_makes_a_version_and_delete_is_logical(db: Session) -> None:
    created = services.create(db, patient_body())
    updated = services.update(
        db, "Patient", created.id, {**created.resource, "gender": "male"}, if_match='W/"1"'
    )
    assert updated.version_id == 2
    assert services.vread(db, "Patient", created.id, 1).resource["gender"] == "female"
    with pytest.raises(PreconditionFailed):
        services.update(db, "Patient", created.id, {**created.resource, "gender": "other"}, if_match='W/"1"')
    deleted = services.delete(db, "Patient", created.id)
    assert deleted is not None
    assert deleted.version_id == 3
    with pytest.raises(Gone):
        services.read(db, "Patient", created.id)
    versions, total = services.history(db, "Patient", created.id)
    assert total == 3
    assert [v.version_id for v in versions] == [3, 2, 1]
    assert versions[0].deleted
    assert services.search(db, "Patient", [("family", "nguyen")]).total == 0
    restored = services.update(db, "Patient", created.id, {**created.resource})
    assert restored.version_id == 4
    assert restored.created


def test_update_with_a_client_id_creates(db: Session) -> None:
    stored = services.update(db, "Patient", "bn-0001", patient_body(id="bn-0001"))
    assert stored.created
    assert services.read(db, "Patient", "bn-0001").version_id == 1
    with pytest.raises(BadRequest):
        services.update(db, "Patient", "bn-0002", patient_body(id="bn-0003"))


def test_invalid_resources_name_the_element(db: Session) -> None:
    with pytest.raises(ValidationFailed) as caught:
        services.create(db, patient_body(birthDate="1990-13-45"))
    assert caught.value.extra["issue"][0]["expression"] == ["Patient.birthDate"]
    with pytest.raises(ValidationFailed) as caught:
        services.create(db, patient_body(nickname="Lan"))
    assert caught.value.extra["issue"][0]["expression"] == ["Patient.nickname"]
    with pytest.raises(ValidationFailed) as caught:
        services.create(db, patient_body(gender=None))
    assert caught.value.extra["issue"][0]["expression"] == ["Patient.gender"]
    with pytest.raises(ValidationFailed) as caught:
        services.create(db, {"resourceType": "Observation", "code": {"text": "x"}})
    assert "Observation.status" in [i["expression"][0] for i in caught.value.extra["issue"]]
    assert db.scalar(select(func.count()).select_from(FhirResource)) == 0


def test_references_to_missing_resources_are_rejected(db: Session) -> None:
    with pytest.raises(ValidationFailed) as caught:
        services.create(db, _observation("no-such-patient"))
    assert caught.value.extra["issue"][0]["expression"] == ["Observation.subject.reference"]


def test_string_search_prefix_exact_contains_and_accents(db: Session) -> None:
    lan = services.create(db, patient_body())
    services.create(db, patient_body(name=[{"family": "Trần", "given": ["Văn", "Đức"]}]))
    assert _ids(services.search(db, "Patient", [("family", "nguy")])) == [lan.id]
    assert _ids(services.search(db, "Patient", [("family", "NGUYEN")])) == [lan.id]
    assert services.search(db, "Patient", [("given", "duc")]).total == 1
    assert services.search(db, "Patient", [("family:exact", "Nguyễn")]).total == 1
    assert services.search(db, "Patient", [("family:exact", "nguyễn")]).total == 0
    assert services.search(db, "Patient", [("name:contains", "guy")]).total == 1
    assert services.search(db, "Patient", [("name", "lan,duc")]).total == 2
    assert services.search(db, "Patient", [("name", "lan"), ("name", "duc")]).total == 0


def test_token_search_forms(db: Session) -> None:
    lan = services.create(db, patient_body())
    other = services.create(db, patient_body(gender="male", identifier=[{"value": "001203004567"}]))
    system = "http://fhir.ehealth.gov.vn/core/sid/national_id"
    assert _ids(services.search(db, "Patient", [("identifier", f"{system}|001203004567")])) == [lan.id]
    assert _ids(services.search(db, "Patient", [("identifier", "|001203004567")])) == [other.id]
    assert services.search(db, "Patient", [("identifier", "001203004567")]).total == 2
    assert _ids(services.search(db, "Patient", [("identifier", f"{system}|")])) == [lan.id]
    assert _ids(services.search(db, "Patient", [("gender:not", "female")])) == [other.id]
    assert _ids(services.search(db, "Patient", [("phone", "0912345678"), ("gender", "female")])) == [lan.id]
    assert services.search(db, "Patient", [("email", "lan@example.vn")]).total == 2


def test_date_prefixes_and_precision(db: Session) -> None:
    patient = services.create(db, patient_body())
    early = services.create(db, _observation(patient.id, effectiveDateTime="2024-03-05T08:30:00+07:00"))
    late_body = _observation(patient.id, effectivePeriod={"start": "2024-04-01", "end": "2024-04-30"})
    del late_body["effectiveDateTime"]
    late = services.create(db, late_body)

    def find(*values: str) -> set[str]:
        return set(_ids(services.search(db, "Observation", [("date", v) for v in values])))

    assert find("2024-03-05") == {early.id}
    assert find("2024-03-05T01:30:00Z") == {early.id}
    assert find("2024-03") == {early.id}
    assert find("2024") == {early.id, late.id}
    assert find("gt2024-03-31") == {late.id}
    assert find("lt2024-04-01") == {early.id}
    assert find("ge2024-04-30") == {late.id}
    assert find("le2024-03-05") == {early.id}
    assert find("sa2024-03-31") == {late.id}
    assert find("eb2024-04-01") == {early.id}
    assert find("ne2024-03-05") == {late.id}
    assert find("ge2024-03-01", "le2024-03-31") == {early.id}
    with pytest.raises(BadRequest):
        find("2024-02-31x")


def test_quantity_and_number_prefixes(db: Session) -> None:
    patient = services.create(db, patient_body())
    slow = services.create(db, _observation(patient.id, valueQuantity={"value": 58.5, "unit": "/min"}))
    fast = services.create(
        db,
        _observation(
            patient.id, valueQuantity={"value": 110, "system": "http://unitsofmeasure.org", "code": "/min"}
        ),
    )

    def find(value: str) -> list[str]:
        return _ids(
            services.search(db, "Observation", [("value-quantity", value), ("_sort", "value-quantity")])
        )

    assert find("gt100") == [fast.id]
    assert find("le58.5") == [slow.id]
    assert find("58.5") == [slow.id]
    assert find("59") == [slow.id]
    assert find("60") == []
    assert find("ap60") == [slow.id]
    assert find("gt50|http://unitsofmeasure.org|/min") == [fast.id]
    assert find("gt50||/min") == [slow.id, fast.id]


def test_reference_forms_and_chaining(db: Session) -> None:
    lan = services.create(db, patient_body())
    duc = services.create(db, patient_body(name=[{"family": "Trần", "given": ["Đức"]}]))
    mine = services.create(db, _observation(lan.id))
    services.create(db, _observation(duc.id))
    assert _ids(services.search(db, "Observation", [("patient", lan.id)])) == [mine.id]
    assert _ids(services.search(db, "Observation", [("subject", f"Patient/{lan.id}")])) == [mine.id]
    assert _ids(services.search(db, "Observation", [("subject:Patient", lan.id)])) == [mine.id]
    assert _ids(services.search(db, "Observation", [("subject:Patient.name", "nguyen")])) == [mine.id]
    assert _ids(services.search(db, "Observation", [("patient.family", "nguyễn")])) == [mine.id]
    with pytest.raises(BadRequest):
        services.search(db, "Observation", [("subject.name", "nguyen")])


def test_include_revinclude_and_iterate(db: Session) -> None:
    org = services.create(db, {"resourceType": "Organization", "name": "Bệnh viện huyện"})
    patient = services.create(db, patient_body(managingOrganization={"reference": f"Organization/{org.id}"}))
    obs = services.create(db, _observation(patient.id))
    result = services.search(db, "Observation", [("_include", "Observation:patient")])
    assert [(i.type, i.id) for i in result.included] == [("Patient", patient.id)]
    result = services.search(
        db, "Observation", [("_include", "Observation:patient"), ("_include:iterate", "Patient:organization")]
    )
    assert {(i.type, i.id) for i in result.included} == {("Patient", patient.id), ("Organization", org.id)}
    result = services.search(db, "Patient", [("_revinclude", "Observation:subject")])
    assert [(i.type, i.id) for i in result.included] == [("Observation", obs.id)]


def test_sort_on_several_keys_and_paging(db: Session) -> None:
    names = [("An", "2001-01-01"), ("Bình", "1999-05-05"), ("An", "1980-02-02"), ("Cúc", "1999-05-05")]
    ids = {}
    for given, born in names:
        stored = services.create(db, patient_body(name=[{"family": "Lê", "given": [given]}], birthDate=born))
        ids[(given, born)] = stored.id
    result = services.search(db, "Patient", [("_sort", "given,-birthdate")])
    expected = [
        ids[("An", "2001-01-01")],
        ids[("An", "1980-02-02")],
        ids[("Bình", "1999-05-05")],
        ids[("Cúc", "1999-05-05")],
    ]
    assert _ids(result) == expected
    first = services.search(db, "Patient", [("_sort", "-birthdate,given"), ("_count", "3")])
    assert first.has_next
    assert first.total == 4
    services.create(db, patient_body(name=[{"family": "Lê", "given": ["Aa"]}], birthDate="2020-01-01"))
    second = services.search(
        db,
        "Patient",
        [
            ("_sort", "-birthdate,given"),
            ("_count", "3"),
            ("_getpagesoffset", "3"),
            ("_snapshot", first.snapshot),
        ],
    )
    assert len(_ids(first)) + len(_ids(second)) == 4
    assert set(_ids(first)) | set(_ids(second)) == set(ids.values())


def test_search_values_are_data_not_sql(db: Session) -> None:
    services.create(db, patient_body())
    for hostile in ("x' OR '1'='1", "%", "_", "\\", "'; DROP TABLE fhir_resource; --"):
        assert services.search(db, "Patient", [("family", hostile)]).total == 0
        assert services.search(db, "Patient", [("identifier", hostile)]).total == 0
    assert db.scalar(select(func.count()).select_from(FhirResource)) == 1


def test_unknown_parameters_warn_or_fail_when_strict(db: Session) -> None:
    services.create(db, patient_body())
    result = services.search(db, "Patient", [("shoe-size", "42"), ("gender", "female")])
    assert result.total == 1
    assert result.warnings == ["Unknown search parameter 'shoe-size' for Patient"]
    with pytest.raises(BadRequest):
        services.search(db, "Patient", [("shoe-size", "42")], strict=True)


def _transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_resolves_urn_and_conditional_references(db: Session) -> None:
    doctor = services.create(
        db,
        {"resourceType": "Practitioner", "identifier": [{"system": "http://example.org/npi", "value": "42"}]},
    )
    bundle = _transaction(
        {
            "fullUrl": "urn:uuid:p1",
            "resource": patient_body(),
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": "urn:uuid:o1",
            "resource": _observation(
                "x",
                subject={"reference": "urn:uuid:p1"},
                performer=[{"reference": "Practitioner?identifier=http://example.org/npi|42"}],
            ),
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    result = services.transaction(db, bundle)
    assert [e.status for e in result.entries] == ["201 Created", "201 Created"]
    patient, observation = (e.stored for e in result.entries)
    assert patient is not None
    assert observation is not None
    stored = observation.resource
    assert stored["subject"]["reference"] == f"Patient/{patient.id}"
    assert stored["performer"][0]["reference"] == f"Practitioner/{doctor.id}"
    assert _ids(services.search(db, "Observation", [("patient", patient.id)])) == [observation.id]


def test_a_transaction_with_one_bad_entry_leaves_nothing(db: Session) -> None:
    bundle = _transaction(
        {
            "fullUrl": "urn:uuid:p1",
            "resource": patient_body(),
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": patient_body(birthDate="not-a-date"), "request": {"method": "POST", "url": "Patient"}},
    )
    with pytest.raises(ValidationFailed) as caught:
        services.transaction(db, bundle)
    assert caught.value.extra["issue"][0]["expression"] == ["Bundle.entry[1].resource.birthDate"]
    db.rollback()
    assert db.scalar(select(func.count()).select_from(FhirResourceHistory)) == 0
    missing = _transaction(
        {"resource": _observation("nobody"), "request": {"method": "POST", "url": "Observation"}},
    )
    with pytest.raises(ValidationFailed) as caught:
        services.transaction(db, missing)
    assert caught.value.extra["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject.reference"]
    unresolved = _transaction(
        {
            "resource": _observation("x", subject={"reference": "urn:uuid:nowhere"}),
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    with pytest.raises(BadRequest, match=r"Bundle\.entry\[0\]"):
        services.transaction(db, unresolved)


def test_a_bundle_is_validated_before_it_touches_the_database(db: Session) -> None:
    """Validation needs no session, so the API can do it before taking SQLite's write lock."""
    bundle = _transaction(
        {"resource": patient_body(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient_body(birthDate="not-a-date"), "request": {"method": "POST", "url": "Patient"}},
    )
    prepared = services.prepare_bundle(bundle)
    assert [i["expression"] for i in prepared.issues[1]] == [["Bundle.entry[1].resource.birthDate"]]
    assert 0 not in prepared.issues
    with pytest.raises(ValidationFailed) as caught:
        services.transaction(db, prepared)
    assert caught.value.extra["issue"][0]["expression"] == ["Bundle.entry[1].resource.birthDate"]
    db.rollback()
    assert db.scalar(select(func.count()).select_from(FhirResource)) == 0
    batch = services.transaction(db, services.prepare_bundle({**bundle, "type": "batch"}))
    assert [e.status for e in batch.entries] == ["201 Created", "422 Unprocessable Entity"]


def test_if_none_exist_in_bundles_finds_the_existing_resource(db: Session) -> None:
    entry = {
        "resource": {
            "resourceType": "Organization",
            "identifier": [{"system": "http://example.org/org", "value": "1"}],
            "name": "BV",
        },
        "request": {
            "method": "POST",
            "url": "Organization",
            "ifNoneExist": "identifier=http://example.org/org|1",
        },
    }
    first = services.transaction(db, {"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    second = services.transaction(db, {"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    assert first.entries[0].status == "201 Created"
    assert second.entries[0].status == "200 OK"
    assert first.entries[0].stored.id == second.entries[0].stored.id  # type: ignore[union-attr]
    assert services.search(db, "Organization", {}).total == 1


def test_conditional_creates_in_a_batch_find_each_match_as_one_by_one(db: Session) -> None:
    def org(value: str, system: str = "http://example.org/org") -> dict[str, Any]:
        return {"resourceType": "Organization", "identifier": [{"system": system, "value": value}]}

    def entry(value: str, condition: str | None = None) -> dict[str, Any]:
        return {
            "resource": org(value),
            "request": {
                "method": "POST",
                "url": "Organization",
                "ifNoneExist": condition or f"identifier=http://example.org/org|{value}",
            },
        }

    kept = services.create(db, org("kept"))
    services.create(db, org("twice"))
    services.create(db, org("twice"))
    gone = services.create(db, org("gone"))
    services.delete_resource(db, "Organization", gone.id)
    services.create(db, org("elsewhere", system="http://example.org/other"))
    result = services.transaction(
        db,
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                entry("kept"),
                entry("twice"),
                entry("gone"),
                entry("elsewhere"),
                entry("new"),
                entry("kept", "identifier=http%3A%2F%2Fexample.org%2Forg%7Ckept"),
            ],
        },
    )
    assert [e.status.split()[0] for e in result.entries] == ["200", "412", "201", "201", "201", "200"]
    assert result.entries[0].stored.id == kept.id  # type: ignore[union-attr]
    assert result.entries[5].stored.id == kept.id  # type: ignore[union-attr]
    assert "More than one Organization" in result.entries[1].outcome["issue"][0]["diagnostics"]  # type: ignore[index]


def test_batch_entries_succeed_or_fail_on_their_own(db: Session) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient_body(), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient_body(birthDate="12/04/1990"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient/missing"}},
        ],
    }
    result = services.transaction(db, batch)
    assert [e.status.split()[0] for e in result.entries] == ["201", "422", "404"]
    assert result.entries[1].outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.birthDate"]  # type: ignore[index]
    assert services.search(db, "Patient", {}).total == 1


def test_everything_returns_the_compartment_and_what_it_references(db: Session) -> None:
    org = services.create(db, {"resourceType": "Organization", "name": "BV"})
    patient = services.create(db, patient_body(managingOrganization={"reference": f"Organization/{org.id}"}))
    obs = services.create(db, _observation(patient.id))
    other = services.create(db, patient_body())
    services.create(db, _observation(other.id))
    resources, total = services.everything(db, patient.id)
    assert total == 3
    assert (resources[0].type, resources[0].id) == ("Patient", patient.id)
    assert {(r.type, r.id) for r in resources} == {
        ("Patient", patient.id),
        ("Observation", obs.id),
        ("Organization", org.id),
    }
    page, total = services.everything(db, patient.id, count=2, offset=2)
    assert total == 3
    assert len(page) == 1
    with pytest.raises(NotFound):
        services.everything(db, "nobody")


def test_index_rows_are_replaced_on_update(db: Session) -> None:
    stored = services.create(db, patient_body())
    services.update(db, "Patient", stored.id, {**stored.resource, "name": [{"family": "Phạm"}]})
    families = db.scalars(
        select(FhirIndexString.value).where(
            FhirIndexString.res_id == stored.id, FhirIndexString.param == "family"
        )
    ).all()
    assert families == ["pham"]


def test_common_parameters_id_last_updated_tag_profile_and_missing(db: Session) -> None:
    profile = "http://fhir.ehealth.gov.vn/core/StructureDefinition/vn-core-patient"
    tagged = services.create(
        db,
        patient_body(
            meta={"profile": [profile], "tag": [{"system": "http://example.org/tags", "code": "vip"}]}
        ),
    )
    plain_body = patient_body()
    del plain_body["birthDate"]
    plain = services.create(db, plain_body)
    assert _ids(services.search(db, "Patient", [("_id", f"{tagged.id},nope")])) == [tagged.id]
    assert _ids(services.search(db, "Patient", [("_tag", "http://example.org/tags|vip")])) == [tagged.id]
    assert _ids(services.search(db, "Patient", [("_profile", profile)])) == [tagged.id]
    assert _ids(services.search(db, "Patient", [("_profile:below", "http://fhir.ehealth.gov.vn/core/")])) == [
        tagged.id
    ]
    assert _ids(services.search(db, "Patient", [("birthdate:missing", "true")])) == [plain.id]
    assert _ids(services.search(db, "Patient", [("birthdate:missing", "false")])) == [tagged.id]
    stamp = services.instant(tagged.last_updated)
    assert tagged.id in _ids(services.search(db, "Patient", [("_lastUpdated", f"ge{stamp}")]))
    assert services.search(db, "Patient", [("_lastUpdated", "lt2000-01-01")]).total == 0
    assert _ids(services.search(db, "Patient", [("_sort", "-_lastUpdated"), ("_count", "1")])) == [plain.id]


def test_a_referenced_resource_cannot_be_deleted_alone(db: Session) -> None:
    patient = services.create(db, patient_body())
    obs = services.create(db, _observation(patient.id))
    with pytest.raises(Conflict, match=f"Observation/{obs.id}"):
        services.delete(db, "Patient", patient.id)
    both = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{patient.id}"}},
            {"request": {"method": "DELETE", "url": f"Observation/{obs.id}"}},
        ],
    }
    assert [e.status for e in services.transaction(db, both).entries] == ["204 No Content", "204 No Content"]
    assert services.search(db, "Observation", {}).total == 0


def test_repeated_conditional_creates_in_one_transaction_make_one_resource(db: Session) -> None:
    organization = {
        "resourceType": "Organization",
        "identifier": [{"system": "http://example.org/org", "value": "7"}],
    }
    entry = {
        "resource": organization,
        "request": {
            "method": "POST",
            "url": "Organization",
            "ifNoneExist": "identifier=http://example.org/org|7",
        },
    }
    result = services.transaction(
        db,
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{**entry, "fullUrl": "urn:uuid:o1"}, {**entry, "fullUrl": "urn:uuid:o2"}],
        },
    )
    assert [e.status for e in result.entries] == ["201 Created", "200 OK"]
    assert result.entries[0].stored.id == result.entries[1].stored.id  # type: ignore[union-attr]
    assert services.search(db, "Organization", {}).total == 1


def test_conditional_references_in_a_transaction_need_exactly_one_live_match(db: Session) -> None:
    """A transaction looks its conditional references up together; each still needs one match."""
    npi = "http://example.org/npi"

    def practitioner(value: str) -> dict[str, Any]:
        return {"resourceType": "Practitioner", "identifier": [{"system": npi, "value": value}]}

    one = services.create(db, {**practitioner("1"), "name": [{"family": "Lê"}]})
    services.create(db, practitioner("2"))
    services.create(db, practitioner("2"))
    gone = services.create(db, practitioner("3"))
    services.delete(db, "Practitioner", gone.id)
    patient = services.create(db, patient_body())

    def observed_by(*performers: str) -> dict[str, Any]:
        observation = _observation(patient.id, performer=[{"reference": p} for p in performers])
        return _transaction({"resource": observation, "request": {"method": "POST", "url": "Observation"}})

    result = services.transaction(
        db,
        observed_by(
            f"Practitioner?identifier={npi}|1",
            "Practitioner?family=L%C3%AA",
            f"Practitioner?identifier={npi}|1",
        ),
    )
    stored = result.entries[0].stored
    assert stored is not None
    assert [p["reference"] for p in stored.resource["performer"]] == [f"Practitioner/{one.id}"] * 3
    where = re.escape(
        "Bundle.entry[0]: Bundle.entry[0].resource.performer[0].reference: the conditional reference"
    )
    with pytest.raises(
        PreconditionFailed, match=where + re.escape(f" Practitioner?identifier={npi}|2 matches 2 resources")
    ):
        services.transaction(db, observed_by(f"Practitioner?identifier={npi}|2"))
    with pytest.raises(
        BadRequest, match=where + re.escape(f" Practitioner?identifier={npi}|3 matches 0 resources")
    ):
        services.transaction(db, observed_by(f"Practitioner?identifier={npi}|3"))


def _index_of(db: Session, resource_type: str, resource_id: str) -> list[tuple[Any, ...]]:
    """Return a resource's index rows, without row ids, its own id or its _lastUpdated."""
    rows: list[tuple[Any, ...]] = []
    for table in {t.name: t for t in INDEX_TABLES.values()}.values():
        columns = [c for c in table.c if c.name not in ("row_id", "res_id")]
        found = db.execute(
            select(*columns).where(
                table.c.res_type == resource_type,
                table.c.res_id == resource_id,
                table.c.param != "_lastUpdated",
            )
        )
        rows.extend((table.name, *row) for row in found)
    return sorted(rows, key=repr)


def test_a_large_transaction_indexes_each_resource_as_a_single_write_does(db: Session) -> None:
    """Big batches of rows take another way into the database (COPY on PostgreSQL); same rows."""
    patient = services.create(db, patient_body())
    single = services.create(db, _observation(patient.id))
    count = services.COPY_MIN_ROWS + 10
    entry = {"resource": _observation(patient.id), "request": {"method": "POST", "url": "Observation"}}
    result = services.transaction(db, _transaction(*[entry] * count))
    db.commit()
    ids = [e.stored.id for e in result.entries if e.stored is not None]
    assert len(ids) == count
    found = services.search(db, "Observation", [("code", "http://loinc.org|8867-4"), ("_count", "1000")])
    assert sorted(_ids(found)) == sorted([single.id, *ids])
    assert _index_of(db, "Observation", ids[-1]) == _index_of(db, "Observation", single.id) != []
    assert services.compartments_of(db, "Observation", ids[-1]) == {patient.id}
    assert services.read(db, "Observation", ids[-1]).resource["valueQuantity"]["value"] == 72
    assert db.scalar(select(func.count()).select_from(FhirResourceHistory)) == count + 2


@pytest.mark.parametrize("size", [2, services.COPY_MIN_ROWS], ids=["insert", "copy"])
def test_a_clash_in_a_bulk_write_is_the_database_error_and_leaves_nothing(db: Session, size: int) -> None:
    """However the rows go in, a clash the database finds surfaces as SQLAlchemy's IntegrityError."""
    taken = services.create(db, patient_body())
    db.commit()
    moment = services._now()
    writes = [
        services._Write("Patient", str(uuid.uuid4()), 1, "POST", moment, moment, True, None, None)
        for _ in range(size - 1)
    ]
    writes.append(services._Write("Patient", taken.id, 1, "POST", moment, moment, True, None, None))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        services._apply(db, writes)
    db.rollback()
    assert db.scalar(select(func.count()).select_from(FhirResource)) == 1
