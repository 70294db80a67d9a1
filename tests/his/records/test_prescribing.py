"""Prescribing, safety overrides, signing, verification, tamper detection and amendments."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from fhir import services as store
from fhir.models import FhirResourceHistory
from his.db import get_database
from his.errors import Conflict, ValidationFailed
from his.models import User
from his.records import services, signatures
from his.records.models import Prescription, SigningKey
from his.records.services import DraftLine, DraftPrescription
from his.records.signatures import OverrideRequired

from .conftest import Visit, actor_of

TODAY = date.today()
SECRET = "a-test-secret-that-is-long-enough-1234"
WARFARIN_ASPIRIN = (DraftLine("VTS0012", "tối 1 viên"), DraftLine("VTS0010", "sáng 1 viên", "Uống sau ăn"))


@pytest.fixture
def doctor(make_user: Callable[..., User]) -> User:
    return make_user("doctor", full_name="Lê Văn Minh")


def prescribe(
    session: Session, visit: Visit, doctor: User, lines: tuple[DraftLine, ...], days: int = 5, **extra: object
) -> Prescription:
    prescription, _plan = services.save_prescription(
        session,
        visit.encounter_id,
        DraftPrescription(lines, days, **extra),
        actor_of(doctor),
        on=TODAY,  # type: ignore[arg-type]
    )
    return prescription


def _prescription_gets_a_national_code_and_grouped_medication_requests(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    prescription = prescribe(
        session,
        visit,
        doctor,
        (
            DraftLine("VTS0001", "sáng 1 viên, chiều 1 viên"),
            DraftLine("VTS0020", "ngày 3 lần, mỗi lần 1 viên"),
        ),
    )
    assert prescription.code.startswith("01234")
    assert prescription.code.endswith("-C")
    assert len(prescription.code) == 14
    found = store.search(session, "MedicationRequest", [("encounter", f"Encounter/{visit.encounter_id}")])
    requests = sorted((m.resource for m in found.matches), key=lambda r: r["identifier"][0]["value"])
    assert [r["groupIdentifier"]["value"] for r in requests] == [prescription.code] * 2
    assert [r["dispenseRequest"]["quantity"]["value"] for r in requests] == [10, 15]
    assert requests[0]["dosageInstruction"][0]["text"] == "sáng 1 viên, chiều 1 viên"
    assert {r["status"] for r in requests} == {"draft"}


def _narcotic_prescription_is_type_n_and_limited_to_seven_days(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    with pytest.raises(ValidationFailed) as caught:
        prescribe(session, visit, doctor, (DraftLine("VTS0014", "sáng 1 viên, tối 1 viên"),), days=10)
    assert "days" in caught.value.fields
    prescription = prescribe(
        session, visit, doctor, (DraftLine("VTS0014", "sáng 1 viên, tối 1 viên"),), days=7
    )
    assert prescription.code.endswith("-N")
    with pytest.raises(ValidationFailed) as caught:
        prescribe(
            session, visit, doctor, (DraftLine("VTS0014", "tối 1 viên"), DraftLine("VTS0001", "tối 1 viên"))
        )
    assert "lines" in caught.value.fields


def _bad_lines_are_named(session: Session, make_visit: Callable[..., Visit], doctor: User) -> None:
    visit = make_visit()
    with pytest.raises(ValidationFailed) as caught:
        prescribe(
            session,
            visit,
            doctor,
            (DraftLine("NOPE", "sáng 1 viên"), DraftLine("VTS0001", "khi đau")),
            days=60,
        )
    assert set(caught.value.fields) == {"lines.1.drug", "lines.2.dosage", "days"}


def _child_without_weight_is_refused(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit(birth_date=date(TODAY.year - 3, 1, 1), name="Bé Na")
    lines = (DraftLine("VTS0003", "ngày 3 lần, mỗi lần 5 ml"),)
    with pytest.raises(ValidationFailed) as caught:
        prescribe(session, visit, doctor, lines, days=3)
    assert {"weight", "guardian_name"} <= set(caught.value.fields)
    prescription = prescribe(
        session, visit, doctor, lines, days=3, weight_kg=Decimal(14), guardian_name="Nguyễn Thị Mẹ"
    )
    assert prescription.weight_kg == Decimal(14)


def _signed(session: Session, visit: Visit, doctor: User) -> signatures.Signature:
    services.add_diagnosis(session, visit.encounter_id, "I48", actor_of(doctor))
    prescription = prescribe(session, visit, doctor, WARFARIN_ASPIRIN)
    _plan = services.replan(session, prescription, on=TODAY)
    reasons = {w.key: "Rung nhĩ, đã cân nhắc nguy cơ chảy máu" for w in _plan.warnings}
    return signatures.sign_encounter(
        session, visit.encounter_id, actor_of(doctor), overrides=reasons, secret=SECRET, on=TODAY
    )


def _signing_is_refused_until_every_warning_has_a_reason(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    services.add_diagnosis(session, visit.encounter_id, "I48", actor_of(doctor))
    prescribe(session, visit, doctor, WARFARIN_ASPIRIN)
    with pytest.raises(OverrideRequired) as caught:
        signatures.sign_encounter(
            session, visit.encounter_id, actor_of(doctor), overrides={}, secret=SECRET, on=TODAY
        )
    (key,) = caught.value.fields
    assert key == "interaction:VTS0010+VTS0012"
    assert "chảy máu" in caught.value.fields[key]
    with pytest.raises(OverrideRequired):
        signatures.sign_encounter(
            session, visit.encounter_id, actor_of(doctor), overrides={key: " "}, secret=SECRET, on=TODAY
        )
    signature = signatures.sign_encounter(
        session,
        visit.encounter_id,
        actor_of(doctor),
        overrides={key: "Rung nhĩ, theo dõi INR"},
        secret=SECRET,
        on=TODAY,
    )
    issue = next(t for t in signature.targets if t.startswith("DetectedIssue/"))
    stored = store.read(session, "DetectedIssue", issue.split("/")[1]).resource
    assert stored["mitigation"][0]["action"]["text"] == "Rung nhĩ, theo dõi INR"
    assert stored["code"]["coding"][0]["code"] == "DRG"
    assert stored["severity"] == "high"
    assert len(stored["implicated"]) == 2


def _signature_is_a_verifiable_provenance_over_exact_versions(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    signature = _signed(session, visit, doctor)
    provenance = store.read(session, "Provenance", signature.provenance_id).resource
    assert provenance["signature"][0]["sigFormat"] == "application/jose"
    jws = base64.b64decode(provenance["signature"][0]["data"]).decode()
    assert jws.count(".") == 2
    assert ".." in jws
    kinds = {t.split("/")[0] for t in signature.targets}
    assert {"Patient", "Encounter", "Condition", "MedicationRequest", "DetectedIssue"} <= kinds
    everything, _total = store.everything(session, visit.patient_id)
    assert f"Provenance/{signature.provenance_id}" in {r.reference for r in everything}
    assert "DetectedIssue" in {r.type for r in everything}
    assert all("/_history/" in t for t in signature.targets)
    report = signatures.verify(session, signature)
    assert report.valid, report.problems
    assert "Lê Văn Minh" in report.signer
    encounter = store.read(session, "Encounter", visit.encounter_id).resource
    assert encounter["status"] == "finished"
    prescription = session.scalar(select(Prescription).where(Prescription.encounter_id == visit.encounter_id))
    assert prescription.status == "signed"
    assert prescription.valid_until == TODAY + timedelta(days=4)  # five days, the day of signing included
    requests = store.search(session, "MedicationRequest", [("encounter", f"Encounter/{visit.encounter_id}")])
    assert {m.resource["status"] for m in requests.matches} == {"active"}


def _private_keys_are_encrypted_at_rest(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    _signed(session, make_visit(), doctor)
    rows = session.scalars(select(SigningKey)).all()
    assert {r.kind for r in rows} == {"ca", "signer"}
    for row in rows:
        assert b"PRIVATE KEY" not in row.encrypted_key
        assert len(row.encrypted_key) > 100
    from his.records.signing import private_key_of

    with pytest.raises(ValidationFailed):
        private_key_of(rows[0], "another-secret-entirely-000000000000")


def _a_signed_record_refuses_edits(session: Session, make_visit: Callable[..., Visit], doctor: User) -> None:
    visit = make_visit()
    _signed(session, visit, doctor)
    with pytest.raises(Conflict) as caught:
        services.add_diagnosis(session, visit.encounter_id, "I10", actor_of(doctor))
    assert caught.value.code == "RECORD_SIGNED"
    assert "amend" in caught.value.extra
    with pytest.raises(Conflict):
        prescribe(session, visit, doctor, (DraftLine("VTS0001", "tối 1 viên"),))
    with pytest.raises(Conflict):
        signatures.sign_encounter(
            session, visit.encounter_id, actor_of(doctor), overrides={}, secret=SECRET, on=TODAY
        )


def _tampering_in_the_database_is_found_and_named(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    signature = _signed(session, visit, doctor)
    condition_ref = next(t for t in signature.targets if t.startswith("Condition/"))
    rtype, rid, _h, version = condition_ref.split("/")
    row = session.get(FhirResourceHistory, (rtype, rid, int(version)))
    session.execute(
        update(FhirResourceHistory)
        .where(FhirResourceHistory.res_type == rtype, FhirResourceHistory.res_id == rid)
        .values(content=row.content.replace('"I48"', '"I10"'))
    )
    session.expire_all()
    report = signatures.verify(session, signature)
    assert not report.valid
    (problem,) = report.problems
    assert problem.reference == condition_ref
    assert problem.paths == ("code.coding[0].code",)


def _a_later_version_without_amendment_is_reported(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    signature = _signed(session, visit, doctor)
    encounter = store.read(session, "Encounter", visit.encounter_id).resource
    encounter.pop("meta")
    store.update(session, "Encounter", visit.encounter_id, encounter)
    assert signatures.verify(session, signature).valid  # saved again unchanged: nothing to report
    encounter["status"] = "cancelled"
    store.update(session, "Encounter", visit.encounter_id, encounter)
    report = signatures.verify(session, signature)
    assert [p.message for p in report.problems] == [
        "A newer version was written without an amendment signature."
    ]
    assert report.problems[0].reference.startswith(f"Encounter/{visit.encounter_id}/_history/")


def test_amendment_is_a_new_signed_version_naming_the_old_one(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    services.save_note(session, visit.encounter_id, {"chief_complaint": "Hồi hộp"}, actor_of(doctor))
    original = _signed(session, visit, doctor)
    note_ref = next(t for t in original.targets if t.startswith("Composition/"))
    note = store.read(session, "Composition", note_ref.split("/")[1]).resource
    note["section"][0]["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml">Hồi hộp, khó thở</div>'
    with pytest.raises(ValidationFailed):
        signatures.amend(session, visit.encounter_id, note, actor_of(doctor), reason="", secret=SECRET)
    amendment = signatures.amend(
        session, visit.encounter_id, note, actor_of(doctor), reason="Bổ sung triệu chứng", secret=SECRET
    )
    provenance = store.read(session, "Provenance", amendment.provenance_id).resource
    assert provenance["entity"][0]["what"]["reference"] == note_ref
    assert provenance["reason"][0]["text"] == "Bổ sung triệu chứng"
    assert signatures.verify(session, amendment).valid
    report = signatures.verify(session, original)
    assert report.valid
    assert report.amended_by == [amendment.targets[0]]
    request = next(t for t in original.targets if t.startswith("MedicationRequest/"))
    mr = store.read(session, "MedicationRequest", request.split("/")[1]).resource
    with pytest.raises(Conflict):
        signatures.amend(session, visit.encounter_id, mr, actor_of(doctor), reason="Đổi liều", secret=SECRET)


def test_verify_command_reports_valid_and_tampered_records(
    app: Flask, session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    signature = _signed(session, visit, doctor)
    code = session.scalar(select(Prescription.code).where(Prescription.encounter_id == visit.encounter_id))
    session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["verify", code.lower()])
    assert result.exit_code == 0, result.output
    assert "VALID" in result.output
    assert signature.provenance_id in result.output
    session.execute(
        text(
            "UPDATE fhir_resource_history SET content = replace(content, '\"tối 1 viên\"', '\"tối 3 viên\"') WHERE res_type = 'MedicationRequest'"
        )
    )
    session.commit()
    result = runner.invoke(args=["verify", visit.encounter_id])
    assert result.exit_code == 1
    assert "INVALID" in result.output
    assert "dosageInstruction[0].text" in result.output
    assert runner.invoke(args=["verify", "nothing-like-this"]).exit_code == 2


def test_prescribing_rules_codes_and_grouping(
    session: Session,
    make_visit: Callable[..., Visit],
    doctor: User,
) -> None:
    """Codes, grouping, narcotic limits, bad lines and children (one app for the lot)."""
    _prescription_gets_a_national_code_and_grouped_medication_requests(session, make_visit, doctor)
    session.commit()
    _narcotic_prescription_is_type_n_and_limited_to_seven_days(session, make_visit, doctor)
    session.commit()
    _bad_lines_are_named(session, make_visit, doctor)
    session.commit()
    _child_without_weight_is_refused(session, make_visit, doctor)
    session.commit()


def _a_pkcs12_key_from_a_real_ca_signs_verifiably(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
    from cryptography.x509.oid import NameOID

    from his.errors import BadRequest
    from his.records.signing import import_pkcs12

    visit = make_visit()
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Public CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "BS Lê Văn Minh (CA công cộng)")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    blob = pkcs12.serialize_key_and_certificates(
        b"minh", key, cert, [ca_cert], BestAvailableEncryption(b"mat-khau")
    )
    user = session.get(User, doctor.id)
    with pytest.raises(BadRequest):
        import_pkcs12(session, user, blob, "sai-mat-khau", SECRET)
    row = import_pkcs12(session, user, blob, "mat-khau", SECRET)
    assert row.source == "pkcs12"
    signature = _signed(session, visit, doctor)
    assert signature.key_id == row.id
    report = signatures.verify(session, signature)
    assert report.valid, report.problems
    assert "CA công cộng" in report.signer


def test_signing_overrides_provenance_keys_and_immutability(
    session: Session,
    make_visit: Callable[..., Visit],
    doctor: User,
) -> None:
    """Overrides before signing, the Provenance, keys at rest and refused edits (one app for the lot)."""
    _signing_is_refused_until_every_warning_has_a_reason(session, make_visit, doctor)
    session.commit()
    _signature_is_a_verifiable_provenance_over_exact_versions(session, make_visit, doctor)
    session.commit()
    _private_keys_are_encrypted_at_rest(session, make_visit, doctor)
    session.commit()
    _a_signed_record_refuses_edits(session, make_visit, doctor)
    session.commit()
    _a_pkcs12_key_from_a_real_ca_signs_verifiably(session, make_visit, doctor)


def test_verification_finds_tampering_and_unsigned_versions(
    session: Session,
    make_visit: Callable[..., Visit],
    doctor: User,
) -> None:
    """Changes in the database and later unsigned versions are both found."""
    _tampering_in_the_database_is_found_and_named(session, make_visit, doctor)
    session.commit()
    _a_later_version_without_amendment_is_reported(session, make_visit, doctor)
    session.commit()


def test_an_administrator_imports_a_pkcs12_signing_key(
    app: Flask, make_user: Callable[..., User], tmp_path: object
) -> None:
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
    from cryptography.x509.oid import NameOID

    make_user("doctor", username="bsnam")
    make_user("cashier", username="thungan")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "BS Nam")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = Path(str(tmp_path)) / "bsnam.p12"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(b"nam", key, cert, None, BestAvailableEncryption(b"pw"))
    )
    runner = app.test_cli_runner()
    imported = runner.invoke(args=["import-signing-key", "bsnam", str(path), "--password", "pw"])
    assert imported.exit_code == 0, imported.output
    assert "now signs as CN=BS Nam" in imported.output
    wrong = runner.invoke(args=["import-signing-key", "bsnam", str(path), "--password", "sai"])
    assert wrong.exit_code == 1
    assert runner.invoke(args=["import-signing-key", "thungan", str(path), "--password", "pw"]).exit_code == 2
    with app.app_context(), get_database(app).session_scope() as db:
        keys = db.scalars(select(SigningKey).where(SigningKey.source == "pkcs12")).all()
        assert [k.subject for k in keys] == ["CN=BS Nam"]


def test_the_fhir_api_refuses_to_change_or_delete_a_signed_resource(
    app: Flask,
    client: FlaskClient,
    session: Session,
    make_visit: Callable[..., Visit],
    doctor: User,
    make_token: Callable[..., str],
) -> None:
    """PUT, DELETE and a transaction entry on a signed Condition get 409; the version stays."""
    visit = make_visit()
    signature = _signed(session, visit, doctor)
    session.commit()
    condition_id = next(t for t in signature.targets if t.startswith("Condition/")).split("/")[1]
    before = store.read(session, "Condition", condition_id)
    session.rollback()
    headers = {"Authorization": f"Bearer {make_token(doctor)}", "Content-Type": "application/fhir+json"}
    changed = before.resource | {"clinicalStatus": {"text": "resolved"}}
    changed.pop("meta")

    put = client.put(f"/fhir/R4/Condition/{condition_id}", json=changed, headers=headers)
    assert put.status_code == 409, put.get_data(as_text=True)
    assert put.json["resourceType"] == "OperationOutcome"
    assert "amend" in put.get_data(as_text=True)
    delete = client.delete(f"/fhir/R4/Condition/{condition_id}", headers=headers)
    assert delete.status_code == 409
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": changed, "request": {"method": "PUT", "url": f"Condition/{condition_id}"}}],
    }
    bundle = client.post("/fhir/R4", json=transaction, headers=headers)
    assert bundle.status_code == 409

    after = store.read(session, "Condition", condition_id)
    assert after.version_id == before.version_id
    assert signatures.verify(session, signature).valid
    # An unsigned resource of the same patient is still writable through the API.
    observation = client.post(
        "/fhir/R4/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Ghi chú"},
            "subject": {"reference": f"Patient/{visit.patient_id}"},
        },
        headers=headers,
    )
    assert observation.status_code == 201
    observation_id = observation.json["id"]
    assert client.delete(f"/fhir/R4/Observation/{observation_id}", headers=headers).status_code == 204


def test_an_earlier_prescription_counts_for_interactions_while_it_runs(
    session: Session, make_visit: Callable[..., Visit], doctor: User
) -> None:
    """Warfarin from last week's visit warns against aspirin today, not once the course is over.

    The day is the one the doctor prescribes on (the hospital's), not the server's clock: on a
    UTC server the two differ between midnight and 07:00 in Hà Nội.
    """
    earlier = make_visit()
    services.add_diagnosis(session, earlier.encounter_id, "I48", actor_of(doctor))
    prescribe(session, earlier, doctor, (DraftLine("VTS0012", "tối 1 viên"),), days=5)
    signatures.sign_encounter(
        session, earlier.encounter_id, actor_of(doctor), overrides={}, secret=SECRET, on=TODAY
    )
    later = store.create(
        session,
        {
            "resourceType": "Encounter",
            "status": "arrived",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{earlier.patient_id}"},
        },
    )
    aspirin = DraftPrescription((DraftLine("VTS0010", "sáng 1 viên"),), 5)
    _draft, running = services.save_prescription(
        session, later.id, aspirin, actor_of(doctor), on=TODAY + timedelta(days=4)
    )
    assert [w.key for w in running.warnings] == ["interaction:VTS0010+VTS0012"]
    _draft, over = services.save_prescription(
        session, later.id, aspirin, actor_of(doctor), on=TODAY + timedelta(days=30)
    )
    assert over.warnings == ()
