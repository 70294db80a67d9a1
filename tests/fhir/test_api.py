"""Test the REST API at /fhir/R4 the way a FHIR client sees it: status, headers, bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from his.db import get_database
from his.models import AuditRecord, Site
from tests.conftest import BACKEND
from tests.fhir.helpers import FHIR, FhirClient, patient_body


def _create(fhir: FhirClient, body: dict[str, Any]) -> dict[str, Any]:
    response = fhir.post(body["resourceType"], body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json  # type: ignore[no-any-return]


def _observation(patient_id: str, **changes: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-03-05T08:30:00+07:00",
        "valueQuantity": {"value": 72.50, "unit": "/min"},
    }
    body.update(changes)
    return body


def test_metadata_lists_what_is_supported(fhir: FhirClient) -> None:
    response = fhir.client.get("/fhir/R4/metadata")
    assert response.status_code == 200
    assert response.mimetype == FHIR
    statement = response.json
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Encounter", "AuditEvent", "Provenance"} <= set(resources)
    patient_params = {p["name"] for p in resources["Patient"]["searchParam"]}
    assert {
        "identifier",
        "name",
        "family",
        "given",
        "birthdate",
        "gender",
        "phone",
        "email",
    } <= patient_params
    assert {"everything", "validate"} <= {o["name"] for o in resources["Patient"]["operation"]}
    assert {"transaction", "batch"} <= {i["code"] for i in statement["rest"][0]["interaction"]}


def test_create_read_with_etag_and_last_modified(fhir: FhirClient) -> None:
    body = json.dumps(_observation("x"))
    response = fhir.post("Patient", patient_body())
    assert response.status_code == 201
    patient_id = response.json["id"]
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"] == f"http://localhost/fhir/R4/Patient/{patient_id}/_history/1"
    assert response.headers["Last-Modified"].endswith("GMT")
    text = body.replace('"x"', json.dumps(patient_id)).replace("72.5", "72.50")
    created = fhir.post("Observation", text.replace('"Patient/x"', json.dumps("Patient/" + patient_id)))
    assert created.status_code == 201, created.get_data(as_text=True)
    read = fhir.get(f"Observation/{created.json['id']}")
    assert read.status_code == 200
    assert '"value": 72.50' in read.get_data(as_text=True)
    assert '"effectiveDateTime": "2024-03-05T08:30:00+07:00"' in read.get_data(as_text=True)
    assert read.headers["ETag"] == 'W/"1"'


def test_if_none_match_answers_304_with_or_without_weak_prefix(fhir: FhirClient) -> None:
    patient = _create(fhir, patient_body())
    for tag in ('W/"1"', '"1"', "1"):
        assert fhir.get(f"Patient/{patient['id']}", headers={"If-None-Match": tag}).status_code == 304
    assert fhir.get(f"Patient/{patient['id']}", headers={"If-None-Match": 'W/"2"'}).status_code == 200


def test_update_with_if_match_and_create_on_update(fhir: FhirClient) -> None:
    patient = _create(fhir, patient_body())
    changed = {**patient, "gender": "male"}
    assert fhir.put(f"Patient/{patient['id']}", changed, headers={"If-Match": 'W/"1"'}).status_code == 200
    stale = fhir.put(f"Patient/{patient['id']}", changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json["resourceType"] == "OperationOutcome"
    created = fhir.put("Patient/bn-42", patient_body(id="bn-42"))
    assert created.status_code == 201
    assert created.json["meta"]["versionId"] == "1"
    mismatch = fhir.put("Patient/bn-43", patient_body(id="bn-44"))
    assert mismatch.status_code == 400


def test_delete_is_logical_and_versioned(fhir: FhirClient) -> None:
    patient = _create(fhir, patient_body())
    path = f"Patient/{patient['id']}"
    assert fhir.delete(path, headers={"If-Match": 'W/"9"'}).status_code == 412
    assert fhir.delete(path).status_code == 204
    assert fhir.get(path).status_code == 410
    assert fhir.get(f"{path}/_history/1").status_code == 200
    assert fhir.get(f"{path}/_history/2").status_code == 410
    history = fhir.get(f"{path}/_history").json
    assert history["type"] == "history"
    assert history["total"] == 2
    assert history["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in history["entry"][0]
    assert fhir.delete("Patient/never-was").status_code == 404


def test_history_at_type_and_system_level(fhir: FhirClient) -> None:
    patient = _create(fhir, patient_body())
    fhir.put(f"Patient/{patient['id']}", {**patient, "active": True})
    _create(fhir, {"resourceType": "Organization", "name": "BV huyện"})
    assert fhir.get("Patient/_history").json["total"] == 2
    system = fhir.get("_history?_count=2").json
    assert system["total"] == 3
    assert len(system["entry"]) == 2
    assert any(link["relation"] == "next" for link in system["link"])


def test_conditional_create_update_and_delete(fhir: FhirClient) -> None:
    system = "http://fhir.ehealth.gov.vn/core/sid/national_id"
    condition = {"If-None-Exist": f"identifier={system}|001203004567"}
    first = fhir.post("Patient", patient_body(), headers=condition)
    again = fhir.post("Patient", patient_body(), headers=condition)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json["id"] == again.json["id"]
    updated = fhir.put(f"Patient?identifier={system}|001203004567", patient_body(gender="male"))
    assert updated.status_code == 200
    assert updated.json["id"] == first.json["id"]
    assert updated.json["meta"]["versionId"] == "2"
    fresh = fhir.put(
        f"Patient?identifier={system}|999", patient_body(identifier=[{"system": system, "value": "999"}])
    )
    assert fresh.status_code == 201
    fhir.post("Patient", patient_body(identifier=[{"system": system, "value": "999"}]))
    assert fhir.delete(f"Patient?identifier={system}|999").status_code == 412
    assert fhir.delete(f"Patient?identifier={system}|001203004567").status_code == 204
    assert fhir.get(f"Patient/{first.json['id']}").status_code == 410


def test_prefer_return(fhir: FhirClient) -> None:
    minimal = fhir.post("Patient", patient_body(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.get_data() == b""
    assert minimal.headers["Location"]
    outcome = fhir.post("Patient", patient_body(), headers={"Prefer": "return=OperationOutcome"})
    assert outcome.json["resourceType"] == "OperationOutcome"
    full = fhir.post("Patient", patient_body(), headers={"Prefer": "return=representation"})
    assert full.json["resourceType"] == "Patient"


def test_content_types_and_format(fhir: FhirClient) -> None:
    plain = fhir.post(
        "Patient", patient_body(), headers={"Content-Type": "application/json", "Accept": "application/json"}
    )
    assert plain.status_code == 201
    assert plain.mimetype == "application/json"
    patient_id = plain.json["id"]
    assert fhir.get(f"Patient/{patient_id}?_format=json").mimetype == "application/json"
    assert fhir.get(f"Patient/{patient_id}?_format=application/fhir%2Bjson").mimetype == FHIR
    for response in (
        fhir.get(f"Patient/{patient_id}?_format=xml"),
        fhir.get(f"Patient/{patient_id}", headers={"Accept": "application/fhir+xml"}),
    ):
        assert response.status_code == 406
        assert response.json["resourceType"] == "OperationOutcome"
    xml = fhir.post(
        "Patient", "<Patient xmlns='http://hl7.org/fhir'/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert xml.status_code == 415
    assert xml.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        ('{"resourceType": "Patient", "name": [', 400, None),
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, 400, "resourceType"),
        (patient_body(nickname="Lan"), 422, "Patient.nickname"),
        (patient_body(birthDate="1990-02-30x"), 422, "Patient.birthDate"),
        ({"resourceType": "Patient", "link": [{"type": "seealso"}]}, 422, "Patient.link[0].other"),
        (
            patient_body(managingOrganization={"reference": "Organization/nope"}),
            422,
            "Patient.managingOrganization.reference",
        ),
    ],
    ids=[
        "malformed-json",
        "wrong-type",
        "unknown-element",
        "invalid-date",
        "missing-required",
        "missing-reference",
    ],
)
def test_bad_input_gets_an_outcome_naming_the_element(
    fhir: FhirClient, body: Any, status: int, expression: str | None
) -> None:
    response = fhir.post("Patient", body)
    assert response.status_code == status, response.get_data(as_text=True)
    outcome = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    if expression:
        assert expression in [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert fhir.get("Patient").json["total"] == 0


def test_oversized_bodies_get_413(app: Flask, fhir: FhirClient) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    huge = patient_body(name=[{"text": "x" * (limit + 10)}])
    response = fhir.post("Patient", huge)
    assert response.status_code == 413
    assert response.json["resourceType"] == "OperationOutcome"


def test_search_bundle_paging_links_are_absolute_and_stable(fhir: FhirClient) -> None:
    for index in range(5):
        _create(fhir, patient_body(name=[{"family": "Lê", "given": [f"Tên{index}"]}]))
    first = fhir.get("Patient?family=le&_count=2&_sort=given").json
    assert first["type"] == "searchset"
    assert first["total"] == 5
    assert [e["resource"]["name"][0]["given"][0] for e in first["entry"]] == ["Tên0", "Tên1"]
    assert all(e["fullUrl"].startswith("http://localhost/fhir/R4/Patient/") for e in first["entry"])
    seen = [e["resource"]["id"] for e in first["entry"]]
    _create(fhir, patient_body(name=[{"family": "Lê", "given": ["Tên"]}]))
    page = first
    while True:
        links = {link["relation"]: link["url"] for link in page["link"]}
        if "next" not in links:
            break
        assert links["next"].startswith("http://localhost/fhir/R4/Patient?")
        parts = urlsplit(links["next"])
        page = fhir.get(f"Patient?{parts.query}").json
        assert "previous" in {link["relation"] for link in page["link"]}
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert len(seen) == len(set(seen)) == 5


def test_post_search_summary_elements_and_total(fhir: FhirClient) -> None:
    _create(fhir, patient_body())
    posted = fhir.client.post(
        "/fhir/R4/Patient/_search",
        data={"family": "nguyen", "_elements": "name"},
        headers={"Authorization": f"Bearer {fhir.token}"},
    )
    assert posted.status_code == 200
    resource = posted.json["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "name"}
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    count = fhir.get("Patient?_summary=count").json
    assert count["total"] == 1
    assert "entry" not in count
    assert fhir.get("Patient?_count=0").json["total"] == 1
    summary = fhir.get("Patient?_summary=true").json["entry"][0]["resource"]
    assert "birthDate" in summary
    assert "telecom" in summary
    no_total = fhir.get("Patient?_total=none").json
    assert "total" not in no_total


def test_unknown_parameters_warn_and_strict_handling_refuses(fhir: FhirClient) -> None:
    _create(fhir, patient_body())
    lenient = fhir.get("Patient?shoe-size=42").json
    assert lenient["total"] == 1
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    strict = fhir.get("Patient?shoe-size=42", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert "shoe-size" in strict.json["issue"][0]["diagnostics"]


def test_injection_attempts_are_searched_as_data(fhir: FhirClient) -> None:
    _create(fhir, patient_body())
    for hostile in ("' OR 1=1 --", "%25", "Nguy%' --", 'x"; DROP TABLE fhir_resource; --'):
        response = fhir.get("Patient", query_string={"family": hostile})
        assert response.status_code == 200
        assert response.json["total"] == 0
    assert fhir.get("Patient").json["total"] == 1


def test_transaction_over_http_is_atomic_and_names_the_failing_entry(fhir: FhirClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:a",
                "resource": patient_body(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": _observation("x", subject={"reference": "urn:uuid:a"}),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": _observation("x", subject={"reference": "Patient/ghost"}),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    failed = fhir.post("", bundle)
    assert failed.status_code == 422
    assert failed.json["issue"][0]["expression"] == ["Bundle.entry[2].resource.subject.reference"]
    assert fhir.get("Patient").json["total"] == 0
    assert fhir.get("Observation").json["total"] == 0
    bundle["entry"].pop()
    done = fhir.post("", bundle)
    assert done.status_code == 200
    reply = done.json
    assert reply["type"] == "transaction-response"
    assert [e["response"]["status"] for e in reply["entry"]] == ["201 Created", "201 Created"]
    patient_id = reply["entry"][0]["resource"]["id"]
    assert reply["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


def test_everything_and_validate(fhir: FhirClient) -> None:
    patient = _create(fhir, patient_body())
    for _ in range(3):
        _create(fhir, _observation(patient["id"]))
    everything = fhir.get(f"Patient/{patient['id']}/$everything").json
    assert everything["total"] == 4
    assert everything["entry"][0]["resource"]["id"] == patient["id"]
    paged = fhir.get(f"Patient/{patient['id']}/$everything?_count=3").json
    assert len(paged["entry"]) == 3
    assert any(link["relation"] == "next" for link in paged["link"])
    assert fhir.get(f"Patient/{patient['id']}/$everything?_since=2999-01-01").json["total"] == 0
    valid = fhir.post("Patient/$validate", patient_body())
    assert valid.status_code == 200
    assert valid.json["issue"][0]["severity"] == "information"
    invalid = fhir.post("Patient/$validate", patient_body(birthDate="1990-13-01"))
    assert invalid.status_code == 200
    assert invalid.json["issue"][0]["expression"] == ["Patient.birthDate"]
    instance = fhir.post(
        f"Patient/{patient['id']}/$validate",
        {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]},
    )
    assert instance.json["issue"][0]["severity"] == "information"
    assert fhir.get("Patient").json["total"] == 1


def test_tokens_and_scopes_decide_access(
    client: Any, fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    patient = _create(fhir, patient_body())
    assert client.get(f"/fhir/R4/Patient/{patient['id']}").status_code == 401
    reader = fhir_as("doctor", scope="user/Observation.read")
    denied = reader.get(f"Patient/{patient['id']}")
    assert denied.status_code == 403
    assert denied.json["resourceType"] == "OperationOutcome"
    other_site = fhir_as("doctor", site="CENT")
    assert other_site.get(f"Patient/{patient['id']}").status_code == 403
    assert other_site.get("Patient").json["total"] == 0


def test_staff_see_what_their_site_created(fhir_as: Callable[..., FhirClient]) -> None:
    nurse = fhir_as("nurse")
    created = nurse.post("Patient", patient_body())
    assert created.status_code == 201
    assert nurse.get(f"Patient/{created.json['id']}").status_code == 200
    assert nurse.get("Patient").json["total"] == 1
    central = fhir_as("doctor", site="CENT")
    assert central.get(f"Patient/{created.json['id']}").status_code == 403


def test_a_patient_token_sees_only_its_compartment(
    app: Flask, fhir: FhirClient, make_user: Callable[..., Any], make_token: Callable[..., str]
) -> None:
    mine = _create(fhir, patient_body())
    theirs = _create(fhir, patient_body(name=[{"family": "Trần"}]))
    my_obs = _create(fhir, _observation(mine["id"]))
    their_obs = _create(fhir, _observation(theirs["id"]))
    user = make_user("patient", username="lan", national_id="001203004567")
    with get_database(app).session_scope() as session:
        from his.models import User

        session.get(User, user.id).patient_id = mine["id"]  # type: ignore[union-attr]
    me = FhirClient(app.test_client(), make_token(user, "patient/*.read"))
    assert me.get(f"Patient/{mine['id']}").status_code == 200
    assert me.get(f"Observation/{my_obs['id']}").status_code == 200
    assert me.get(f"Observation/{their_obs['id']}").status_code == 403
    assert me.get(f"Patient/{theirs['id']}").status_code == 403
    assert me.get(f"Observation?patient={theirs['id']}").status_code == 403
    assert me.get(f"Patient/{theirs['id']}/$everything").status_code == 403
    own = me.get("Observation").json
    assert [e["resource"]["id"] for e in own["entry"]] == [my_obs["id"]]
    assert me.post("Patient", patient_body()).status_code == 403


def test_every_interaction_is_audited(
    app: Flask, fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    patient = _create(fhir, patient_body())
    fhir.get(f"Patient/{patient['id']}")
    fhir.get("Patient?family=nguyen")
    fhir_as("doctor", site="CENT").get(f"Patient/{patient['id']}")
    with get_database(app).session_scope() as session:
        rows = session.execute(
            select(
                AuditRecord.action,
                AuditRecord.entity_type,
                AuditRecord.entity_id,
                AuditRecord.outcome,
                AuditRecord.patient_id,
            )
        ).all()
    actions = [(r.action, r.outcome) for r in rows if r.entity_type == "Patient"]
    assert ("create", "success") in actions
    assert ("read", "success") in actions
    assert ("search", "success") in actions
    assert ("read", "denied") in actions
    assert any(r.action == "read" and r.patient_id == patient["id"] for r in rows)


def test_bundles_cannot_reach_past_the_callers_patients(
    fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    theirs = _create(fhir, patient_body())
    obs = _create(fhir, _observation(theirs["id"]))
    outsider = fhir_as("doctor", site="CENT")
    search = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Observation"}}],
    }
    assert outsider.post("", search).status_code == 403
    read = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Observation/{obs['id']}"}}],
    }
    assert outsider.post("", read).status_code == 403
    remove = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Observation/{obs['id']}"}}],
    }
    assert outsider.post("", remove).status_code == 403
    assert fhir.get(f"Observation/{obs['id']}").status_code == 200
    own = outsider.post("Patient", patient_body()).json
    mine = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": _observation(own["id"]), "request": {"method": "POST", "url": "Observation"}}],
    }
    assert outsider.post("", mine).status_code == 200
    included = outsider.get(f"Observation?patient={own['id']}&_include=Observation:patient").json
    assert {e["resource"]["resourceType"] for e in included["entry"]} == {"Observation", "Patient"}


def test_client_credentials_give_a_system_token_for_fhir(app: Flask, client: Any) -> None:
    from his.accounts import create_client

    with get_database(app).session_scope() as session:
        _row, secret = create_client(
            session,
            client_id="national-gateway",
            name="Cổng quốc gia",
            scope="system/Patient.read",
            site_code=None,
        )
    issued = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "client_credentials", "client_id": "national-gateway", "client_secret": secret},
    )
    assert issued.status_code == 200, issued.get_data(as_text=True)
    token = issued.json["access_token"]
    gateway = FhirClient(client, token)
    assert gateway.get("Patient").status_code == 200
    assert gateway.get("Observation").status_code == 403
    assert gateway.post("Patient", patient_body()).status_code == 403
    wrong = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "client_credentials", "client_id": "national-gateway", "client_secret": "guess"},
    )
    assert wrong.status_code == 401


def test_staff_cannot_move_another_sites_record_by_update(
    fhir: FhirClient, fhir_as: Callable[..., FhirClient]
) -> None:
    theirs = _create(fhir, patient_body())
    obs = _create(fhir, _observation(theirs["id"]))
    outsider = fhir_as("doctor", site="CENT")
    own = outsider.post("Patient", patient_body(identifier=[])).json
    moved = {**obs, "subject": {"reference": f"Patient/{own['id']}"}}
    assert outsider.put(f"Observation/{obs['id']}", moved).status_code == 403
    assert outsider.put(f"Observation?_id={obs['id']}", moved).status_code == 403
    assert fhir.get(f"Observation/{obs['id']}").json["subject"]["reference"] == f"Patient/{theirs['id']}"


@pytest.fixture
def one_connection(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    settings_overrides["db_pool_size"] = 1
    return settings_overrides


def _write_then_fail(app: Flask) -> None:
    with get_database(app).session_scope() as session:
        session.add(Site(code="HALF", name="Half written", kind="district"))
        session.flush()
        raise RuntimeError("the request fails after its first write")


@pytest.mark.skipif(BACKEND != "postgresql", reason="only PostgreSQL reads run outside a transaction")
def test_a_reads_autocommit_does_not_reach_the_next_write_on_its_connection(
    one_connection: dict[str, Any], app: Flask, fhir: FhirClient
) -> None:
    """A FHIR GET runs without a transaction; the next unit of work on that connection has one."""
    assert fhir.get("Patient").status_code == 200
    with pytest.raises(RuntimeError):
        _write_then_fail(app)
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Site).where(Site.code == "HALF")) == 0
