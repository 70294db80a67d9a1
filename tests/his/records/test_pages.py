"""The doctor's and the pharmacist's pages, through real requests with sessions and CSRF."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from fhir import services as store
from his import audit
from his.db import get_database
from his.models import AuditRecord, User
from his.records.models import Prescription
from tests.conftest import csrf_token, login

from .conftest import Visit


@pytest.fixture
def doctor(make_user: Callable[..., User]) -> User:
    return make_user("doctor", username="bsminh", full_name="Lê Văn Minh")


def post(client: FlaskClient, path: str, data: dict[str, object], page: str) -> object:
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)})


def _worklist_opens_the_encounter(
    client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit(name="Phạm Thị Hồng", queue=4)
    login(client, "bsminh")
    page = client.get("/records/").get_data(as_text=True)
    assert "Phạm Thị Hồng" in page
    link = f"/records/encounters/{visit.encounter_id}"
    assert link in page
    opened = client.get(link)
    assert opened.status_code == 200
    assert "Phạm Thị Hồng" in opened.get_data(as_text=True)


def _prescribe_interacting(client: FlaskClient, visit: Visit) -> str:
    base = f"/records/encounters/{visit.encounter_id}"
    assert (
        post(
            client,
            f"{base}/vitals",
            {"systolic": "150", "diastolic": "90", "pulse": "88", "weight": "65", "height": "160"},
            base,
        ).status_code
        == 303
    )
    assert post(client, f"{base}/diagnoses", {"icd10": "I48"}, base).status_code == 303
    response = post(
        client,
        f"{base}/prescription",
        {
            "drug": ["VTS0012", "VTS0010"],
            "dosage": ["tối 1 viên", "sáng 1 viên"],
            "line_note": ["", "sau ăn"],
            "days": "10",
        },
        base,
    )
    assert response.status_code == 303
    return base


def _doctor_prescribes_sees_the_warning_overrides_and_signs(
    client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> Visit:
    visit = make_visit()
    login(
        client,
        "bsminh",
    )
    base = _prescribe_interacting(client, visit)
    page = client.get(base).get_data(as_text=True)
    assert 'data-testid="warning"' in page
    assert "chảy máu" in page
    code = re.search(r'data-testid="prescription-code">([^<]+)<', page).group(1)
    key = re.search(r'name="reason:([^"]+)"', page).group(1)
    refused = post(client, f"{base}/sign", {f"reason:{key}": ""}, base)
    assert refused.status_code == 422
    assert "Cần ghi lý do." in refused.get_data(as_text=True)
    signed = post(client, f"{base}/sign", {f"reason:{key}": "Rung nhĩ, INR ổn định"}, base)
    assert signed.status_code == 303
    page = client.get(signed.headers["Location"]).get_data(as_text=True)
    assert 'data-testid="national-status" data-status="pending"' in page
    assert 'data-testid="signed-badge"' in page
    assert 'data-testid="prescription-qr"' in page
    again = post(client, f"{base}/diagnoses", {"icd10": "I10"}, base)
    assert again.status_code == 409
    verification = client.get(f"/api/v1/records/verify/{code.lower()}").get_json()
    assert verification["valid"] is True
    amend_page = client.get(f"{base}/amend")
    assert amend_page.status_code == 200
    no_reason = post(client, f"{base}/amend", {"chief_complaint": "Hồi hộp", "reason": ""}, f"{base}/amend")
    assert no_reason.status_code == 422
    amended = post(
        client, f"{base}/amend", {"chief_complaint": "Hồi hộp, khó thở", "reason": "Bổ sung"}, f"{base}/amend"
    )
    assert amended.status_code == 303, re.findall(
        r'role="alert"[^>]*>([^<]*)', amended.get_data(as_text=True)
    )
    after = client.get(f"/api/v1/records/verify/{visit.encounter_id}").get_json()
    assert after["valid"] is True
    assert [t.split("/")[0] for t in after["signatures"][-1]["targets"]] == ["Composition"]
    qr = client.get(f"/records/prescriptions/{code}/qr.svg")
    assert qr.status_code == 200
    assert qr.mimetype == "image/svg+xml"
    return visit


def test_bad_prescription_input_is_named_and_nothing_is_saved(
    app: Flask, client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    base = f"/records/encounters/{visit.encounter_id}"
    response = post(
        client,
        f"{base}/prescription",
        {"drug": ["XX999", "VTS0001"], "dosage": ["sáng 1 viên", "sáng 1 viên"], "days": "60"},
        base,
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert 'data-field="lines.1.drug"' in body
    assert 'data-field="days"' in body
    with get_database(app).session_scope() as db:
        assert db.scalar(select(Prescription.id)) is None


def test_a_doctor_of_another_site_gets_403_and_is_audited(
    app: Flask, client: FlaskClient, make_visit: Callable[..., Visit], make_user: Callable[..., User]
) -> None:
    visit = make_visit()
    make_user("doctor", username="bstw", site="CENT")
    login(client, "bstw")
    assert client.get(f"/records/encounters/{visit.encounter_id}").status_code == 403
    base = f"/records/encounters/{visit.encounter_id}"
    assert (
        client.post(
            f"{base}/diagnoses", data={"icd10": "I10", "csrf_token": csrf_token(client, "/")}
        ).status_code
        == 403
    )
    with app.app_context():
        audit.flush()
    with get_database(app).session_scope() as db:
        denied = db.scalars(
            select(AuditRecord).where(
                AuditRecord.outcome == "denied", AuditRecord.patient_id == visit.patient_id
            )
        ).all()
        assert len(denied) == 2
        assert {d.username for d in denied} == {"bstw"}
        assert store.search(db, "Condition", [("patient", f"Patient/{visit.patient_id}")]).matches == []


def _signed_code(client: FlaskClient, visit: Visit) -> str:
    base = _prescribe_interacting(client, visit)
    page = client.get(base).get_data(as_text=True)
    key = re.search(r'name="reason:([^"]+)"', page).group(1)
    post(client, f"{base}/sign", {f"reason:{key}": "Đã cân nhắc"}, base)
    return re.search(
        r'data-testid="prescription-code">([^<]+)<', client.get(base).get_data(as_text=True)
    ).group(1)


def test_pharmacist_finds_by_code_or_qr_and_dispenses_partly_then_fully(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    doctor: User,
    make_user: Callable[..., User],
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    code = _signed_code(client, visit)
    with app.app_context(), get_database(app).session_scope() as db:
        from his.records.pharmacy import qr_text

        prescription = db.scalar(select(Prescription).where(Prescription.code == code))
        qr = qr_text(db, prescription, app.config["SECRET_KEY"])
    pharmacist = client.application.test_client()
    make_user("pharmacist", username="dshà")
    login(pharmacist, "dshà")
    found = pharmacist.get("/pharmacy/", query_string={"q": code.lower()})
    assert found.status_code == 302
    assert found.headers["Location"].endswith(f"/pharmacy/prescriptions/{code}")
    by_qr = pharmacist.get("/pharmacy/", query_string={"q": qr})
    assert by_qr.status_code == 302
    forged = qr[:-6] + ("AAAAAA" if not qr.endswith("AAAAAA") else "BBBBBB")
    refused = pharmacist.get("/pharmacy/", query_string={"q": forged})
    assert refused.status_code == 409
    shown = refused.get_data(as_text=True)
    assert "forged" in shown or "mã giả" in shown  # English until the catalog has it, then Vietnamese
    _check_qr_offline(app, qr)
    page = pharmacist.get(f"/pharmacy/prescriptions/{code}").get_data(as_text=True)
    assert 'data-valid="yes"' in page
    assert 'data-expired="no"' in page
    items = re.findall(r'name="qty:(\d+)"', page)
    assert len(items) == 2
    warfarin, aspirin = items
    path = f"/pharmacy/prescriptions/{code}/dispense"
    partly = pharmacist.post(
        path,
        data={
            f"qty:{warfarin}": "4",
            "csrf_token": csrf_token(pharmacist, f"/pharmacy/prescriptions/{code}"),
        },
    )
    assert partly.status_code == 303
    page = pharmacist.get(f"/pharmacy/prescriptions/{code}").get_data(as_text=True)
    assert "Partly dispensed" in page or "Đã phát một phần" in page
    too_much = pharmacist.post(
        path,
        data={
            f"qty:{warfarin}": "7",
            "csrf_token": csrf_token(pharmacist, f"/pharmacy/prescriptions/{code}"),
        },
    )
    assert too_much.status_code == 409
    rest = pharmacist.post(
        path,
        data={
            f"qty:{warfarin}": "6",
            f"qty:{aspirin}": "10",
            "csrf_token": csrf_token(pharmacist, f"/pharmacy/prescriptions/{code}"),
        },
    )
    assert rest.status_code == 303
    page = pharmacist.get(f"/pharmacy/prescriptions/{code}").get_data(as_text=True)
    assert 'data-testid="dispense"' not in page
    again = pharmacist.post(
        path,
        data={f"qty:{aspirin}": "1", "csrf_token": csrf_token(pharmacist, f"/pharmacy/prescriptions/{code}")},
    )
    assert again.status_code == 409
    with get_database(app).session_scope() as db:
        dispenses = store.search(
            db, "MedicationDispense", [("patient", f"Patient/{visit.patient_id}")]
        ).matches
        assert sorted(d.resource["quantity"]["value"] for d in dispenses) == [4, 6, 10]


def test_doctor_opens_from_the_worklist_prescribes_overrides_and_signs(
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    doctor: User,
    make_token: Callable[..., str],
) -> None:
    """The worklist opens the encounter; the doctor's whole path to a signed prescription."""
    _worklist_opens_the_encounter(client, make_visit, doctor)
    visit = _doctor_prescribes_sees_the_warning_overrides_and_signs(
        client.application.test_client(), make_visit, doctor
    )
    _the_fhir_api_shows_the_record_and_a_change_breaks_the_signature(client, make_token, doctor, visit)


def _the_fhir_api_shows_the_record_and_a_change_breaks_the_signature(
    client: FlaskClient, make_token: Callable[..., str], doctor: User, visit: Visit
) -> None:
    headers = {"Authorization": f"Bearer {make_token(doctor)}"}
    bundle = client.get(f"/fhir/R4/Patient/{visit.patient_id}/$everything", headers=headers).get_json()
    types = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert {
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "DetectedIssue",
        "Provenance",
    } <= types
    encounter = client.get(f"/fhir/R4/Encounter/{visit.encounter_id}", headers=headers).get_json()
    encounter["status"] = "cancelled"
    encounter.pop("meta")
    changed = client.put(
        f"/fhir/R4/Encounter/{visit.encounter_id}",
        json=encounter,
        headers={**headers, "Content-Type": "application/fhir+json"},
    )
    assert changed.status_code == 200
    report = client.get(f"/api/v1/records/verify/{visit.encounter_id}", headers=headers).get_json()
    assert report["valid"] is False
    assert "without an amendment signature" in report["signatures"][0]["problems"][0]["message"]


def test_dispensing_races_expiry_and_tampering_are_refused(
    app: Flask, make_visit: Callable[..., Visit], doctor: User, make_user: Callable[..., User]
) -> None:
    import threading
    from datetime import date
    from decimal import Decimal

    from his.db import begin_immediate
    from his.errors import Conflict
    from his.records import pharmacy, services, signatures
    from his.records.models import PrescriptionItem

    from .conftest import actor_of, unit_of_work

    visit = make_visit()
    pharmacists = [make_user("pharmacist"), make_user("pharmacist")]
    with unit_of_work(app) as session:
        services.add_diagnosis(session, visit.encounter_id, "J02.9", actor_of(doctor))
        prescription, _plan = services.save_prescription(
            session,
            visit.encounter_id,
            services.DraftPrescription((services.DraftLine("VTS0020", "sáng 1 viên, tối 1 viên"),), 5),
            actor_of(doctor),
            on=date.today(),
        )
        signatures.sign_encounter(
            session, visit.encounter_id, actor_of(doctor), overrides={}, secret="k" * 40, on=date.today()
        )
        code = prescription.code
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def dispense_all(pharmacist: User) -> None:
        with app.app_context(), get_database(app).session_scope() as session:
            found, _qr = pharmacy.find(session, code)
            item = session.scalars(select(PrescriptionItem)).one()
            barrier.wait(timeout=10)
            try:
                if session.get_bind().dialect.name == "sqlite":
                    session.commit()
                    begin_immediate(session)
                pharmacy.dispense(
                    session, found, {item.id: Decimal(10)}, actor_of(pharmacist), today=date.today()
                )
                outcomes.append("dispensed")
            except Conflict as exc:
                outcomes.append(exc.code)
                session.rollback()

    threads = [threading.Thread(target=dispense_all, args=(p,)) for p in pharmacists]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["DISPENSE_EXCEEDS_PRESCRIPTION", "dispensed"]
    with get_database(app).session_scope() as db:
        assert db.scalars(select(PrescriptionItem.dispensed)).one() == 10
        assert (
            len(store.search(db, "MedicationDispense", [("patient", f"Patient/{visit.patient_id}")]).matches)
            == 1
        )
    _expired_and_tampered_prescriptions_are_refused(app, pharmacists[0])


def _expired_and_tampered_prescriptions_are_refused(app: Flask, pharmacist: User) -> None:
    from datetime import date, timedelta
    from decimal import Decimal

    from sqlalchemy import func, update

    from fhir.models import FhirResourceHistory
    from his.errors import Conflict
    from his.records import pharmacy
    from his.records.models import PrescriptionItem

    from .conftest import actor_of, unit_of_work

    with unit_of_work(app) as session:
        prescription = session.scalars(select(Prescription)).one()
        item = session.scalars(select(PrescriptionItem)).one()
        item.dispensed = Decimal(0)
        prescription.valid_until = date.today() - timedelta(days=1)
        session.flush()
        with pytest.raises(Conflict) as expired:
            pharmacy.dispense(
                session, prescription, {item.id: Decimal(1)}, actor_of(pharmacist), today=date.today()
            )
        assert expired.value.code == "PRESCRIPTION_EXPIRED"
        prescription.valid_until = date.today()
        session.execute(
            update(FhirResourceHistory)
            .where(FhirResourceHistory.res_type == "MedicationRequest")
            .values(content=func.replace(FhirResourceHistory.content, '"value":10,', '"value":100,'))
        )
        session.expire_all()
        prescription = session.scalars(select(Prescription)).one()
        state = pharmacy.view(session, prescription, today=date.today())
        assert not state.signature_valid
        assert any("dispenseRequest.quantity.value" in p.paths for p in state.verification.problems)
        with pytest.raises(Conflict) as tampered:
            pharmacy.dispense(
                session, prescription, {item.id: Decimal(1)}, actor_of(pharmacist), today=date.today()
            )
        assert tampered.value.code == "SIGNATURE_INVALID"
        session.rollback()


def _check_qr_offline(app: Flask, qr: str) -> None:
    """Check the QR as a third party would: the published certificate and nothing else of ours."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    prefix, code, digest, key, signature = qr.split("|")
    anonymous = app.test_client()
    published = anonymous.get(f"/records/certificates/{key}.pem")
    assert published.status_code == 200
    signer, issuer = x509.load_pem_x509_certificates(published.data)
    signer.verify_directly_issued_by(issuer)
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signer.public_key().verify(der, f"{prefix}|{code}|{digest}".encode(), ec.ECDSA(hashes.SHA256()))
    assert anonymous.get("/records/certificates/0000000000000000.pem").status_code == 404
