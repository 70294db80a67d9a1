"""Orders come from a catalogue of priced services; performing one and dispensing drugs tell billing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from billing.charges import charges_of_encounter
from billing.demo import load_demo_prices
from billing.subscribers import handle
from fhir import services as store
from his import audit, events
from his.db import get_database
from his.models import AuditRecord, User
from his.records.catalogue import SERVICE_SYSTEM, orderable_services
from his.records.mapping import ORDER_CATEGORIES
from tests.conftest import csrf_token, login

from .conftest import Visit
from .test_pages import _signed_code, post

REQUIRED_CODES = {"XN.CTM", "XN.GLU", "XN.HBA1C", "CDHA.XQNG", "CDHA.SAOB", "TDCN.ECG", "GPB.STTB"}


@pytest.fixture
def doctor(make_user: Callable[..., User]) -> User:
    return make_user("doctor", username="bsminh", full_name="Lê Văn Minh")


@contextmanager
def listening(app: Flask, topic: str) -> Iterator[list[dict[str, Any]]]:
    """Collect the events of a topic published on the in-process bus while the block runs."""
    received: list[dict[str, Any]] = []
    with app.app_context(), events.subscribe(topic, timeout=0.2) as subscription:
        yield received
        while (event := subscription.get(0.2)) is not None:
            received.append(event.data)


def orders_of(app: Flask, encounter_id: str) -> list[dict[str, Any]]:
    with app.app_context(), get_database(app).session_scope() as db:
        found = store.search(db, "ServiceRequest", [("encounter", f"Encounter/{encounter_id}")]).matches
        return [{**m.resource, "_version": m.version_id} for m in found]


def test_the_service_catalogue_has_price_list_codes_in_known_categories() -> None:
    services = orderable_services()
    assert len(services) >= 30
    assert set(services) >= REQUIRED_CODES
    assert all(re.fullmatch(r"(XN|CDHA|TDCN|GPB)\.[A-Z0-9]+", code) for code in services)
    assert {s.category for s in services.values()} == set(ORDER_CATEGORIES)
    assert services["GPB.STTB"].vi == "Sinh thiết, xét nghiệm mô bệnh học"
    assert services["GPB.STTB"].category == "pathology"
    assert all(s.vi and s.en for s in services.values())


def test_orders_pick_a_service_or_free_text_and_a_bad_code_is_named_and_saves_nothing(
    app: Flask, client: FlaskClient, make_visit: Callable[..., Visit], doctor: User
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    base = f"/records/encounters/{visit.encounter_id}"
    page = client.get(base).get_data(as_text=True)
    assert '<option value="GPB.STTB">GPB.STTB · Sinh thiết, xét nghiệm mô bệnh học</option>' in page

    bad = post(client, f"{base}/orders", {"service": "XN.KHONGCO", "order": ""}, base)
    assert bad.status_code == 422
    assert 'data-field="service"' in bad.get_data(as_text=True)
    assert orders_of(app, visit.encounter_id) == []

    assert (
        post(client, f"{base}/orders", {"service": "xn.ctm", "order": "lấy máu lúc đói"}, base).status_code
        == 303
    )
    assert (
        post(
            client,
            f"{base}/orders",
            {"service": "", "category": "lab", "order": "Test nhanh Dengue NS1"},
            base,
        )
    ).status_code == 303
    coded, free = sorted(orders_of(app, visit.encounter_id), key=lambda o: "coding" not in o["code"])
    assert coded["code"] == {
        "coding": [
            {"system": SERVICE_SYSTEM, "code": "XN.CTM", "display": "Tổng phân tích tế bào máu ngoại vi"}
        ],
        "text": "Tổng phân tích tế bào máu ngoại vi",
    }
    assert coded["category"][0]["coding"][0]["code"] == ORDER_CATEGORIES["lab"]["code"]
    assert coded["note"] == [{"text": "lấy máu lúc đói"}]
    assert free["code"] == {"text": "Test nhanh Dengue NS1"}


def test_a_nurse_marks_a_signed_order_performed_once_and_billing_charges_it_once(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    doctor: User,
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    base = f"/records/encounters/{visit.encounter_id}"
    assert post(client, f"{base}/orders", {"service": "CDHA.XQNG"}, base).status_code == 303
    assert (
        post(client, f"{base}/orders", {"category": "imaging", "order": "Chụp phim răng"}, base).status_code
        == 303
    )
    _signed_code(client, visit)
    orders = {o["code"]["text"]: o for o in orders_of(app, visit.encounter_id)}
    xray, tooth = orders["Chụp X-quang ngực thẳng"], orders["Chụp phim răng"]
    make_user("nurse", username="ddlan", full_name="Đỗ Lan")
    nurse = app.test_client()
    login(nurse, "ddlan")
    page = nurse.get(base).get_data(as_text=True)
    assert page.count('data-testid="perform-order"') == 2
    assert "Chẩn đoán hình ảnh: Chụp X-quang ngực thẳng <code>CDHA.XQNG</code>" in page
    assert "Đánh dấu đã thực hiện" in page

    with listening(app, "service.performed") as performed:
        done = post(nurse, f"{base}/orders/{xray['id']}/performed", {}, base)
        assert done.status_code == 303
        again = post(nurse, f"{base}/orders/{xray['id']}/performed", {}, base)
        assert again.status_code == 409
        assert "already performed" in again.get_data(as_text=True) or "đã được thực hiện" in again.get_data(
            as_text=True
        )
        assert post(nurse, f"{base}/orders/{tooth['id']}/performed", {}, base).status_code == 303

    assert len(performed) == 1
    event = performed[0]
    with app.app_context(), get_database(app).session_scope() as db:
        procedure = store.read(db, "Procedure", event["performed_id"]).resource
        untouched = store.read(db, "ServiceRequest", xray["id"])
        procedures = store.search(db, "Procedure", [("patient", f"Patient/{visit.patient_id}")]).matches
    assert event == {
        "performed_id": procedure["id"],
        "encounter_id": visit.encounter_id,
        "patient_id": visit.patient_id,
        "item_code": "CDHA.XQNG",
        "quantity": 1,
        "performed_at": procedure["performedDateTime"],
    }
    datetime.fromisoformat(event["performed_at"])
    assert procedure["status"] == "completed"
    assert procedure["basedOn"] == [{"reference": f"ServiceRequest/{xray['id']}"}]
    assert procedure["encounter"] == {"reference": f"Encounter/{visit.encounter_id}"}
    assert (untouched.version_id, untouched.resource["status"]) == (xray["_version"], "active")
    assert len(procedures) == 2
    page = nurse.get(base).get_data(as_text=True)
    assert page.count('data-testid="order-performed"') == 2
    assert 'data-testid="perform-order"' not in page
    verification = client.get(f"/api/v1/records/verify/{visit.encounter_id}").get_json()
    assert verification["valid"] is True

    with app.app_context(), get_database(app).session_scope() as db:
        load_demo_prices(db)
    handle(app, "service.performed", event)
    handle(app, "service.performed", event)
    with app.app_context(), get_database(app).session_scope() as db:
        charges = [
            (c.item_code, c.quantity, c.unit_price, c.status)
            for c in charges_of_encounter(db, visit.encounter_id)
        ]
    assert charges == [("CDHA.XQNG", Decimal(1), Decimal(65400), "billable")]


def test_performing_an_order_of_another_site_is_403_audited_and_an_unknown_order_404(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    doctor: User,
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    base = f"/records/encounters/{visit.encounter_id}"
    assert post(client, f"{base}/orders", {"service": "XN.GLU"}, base).status_code == 303
    (order,) = orders_of(app, visit.encounter_id)
    other = make_visit(name="Hoàng Văn Tư", queue=2)
    wrong_encounter = post(
        client, f"/records/encounters/{other.encounter_id}/orders/{order['id']}/performed", {}, base
    )
    assert wrong_encounter.status_code == 404
    make_user("nurse", username="ddtw", site="CENT")
    elsewhere = app.test_client()
    login(elsewhere, "ddtw")
    with listening(app, "service.performed") as performed:
        refused = elsewhere.post(
            f"{base}/orders/{order['id']}/performed", data={"csrf_token": csrf_token(elsewhere, "/")}
        )
    assert refused.status_code == 403
    assert performed == []
    with app.app_context():
        audit.flush()
    with app.app_context(), get_database(app).session_scope() as db:
        assert store.search(db, "Procedure", [("patient", f"Patient/{visit.patient_id}")]).matches == []
        denied = db.scalars(
            select(AuditRecord).where(AuditRecord.outcome == "denied", AuditRecord.username == "ddtw")
        ).all()
        assert [(d.action, d.patient_id) for d in denied] == [("write", visit.patient_id)]


def test_every_dispensing_tells_billing_which_drug_and_how_much_and_a_repeat_charges_once(
    app: Flask,
    client: FlaskClient,
    make_visit: Callable[..., Visit],
    make_user: Callable[..., User],
    doctor: User,
) -> None:
    visit = make_visit()
    login(client, "bsminh")
    code = _signed_code(client, visit)
    make_user("pharmacist", username="dsha")
    pharmacist = app.test_client()
    login(pharmacist, "dsha")
    page = f"/pharmacy/prescriptions/{code}"
    warfarin, aspirin = re.findall(r'name="qty:(\d+)"', pharmacist.get(page).get_data(as_text=True))
    path = f"{page}/dispense"

    with listening(app, "medication.dispensed") as dispensed:
        first = pharmacist.post(
            path, data={f"qty:{warfarin}": "4", "csrf_token": csrf_token(pharmacist, page)}
        )
        assert first.status_code == 303
        refused = pharmacist.post(
            path, data={f"qty:{warfarin}": "7", "csrf_token": csrf_token(pharmacist, page)}
        )
        assert refused.status_code == 409
        rest = pharmacist.post(
            path,
            data={f"qty:{warfarin}": "6", f"qty:{aspirin}": "10", "csrf_token": csrf_token(pharmacist, page)},
        )
        assert rest.status_code == 303

    with app.app_context(), get_database(app).session_scope() as db:
        handed = {
            m.id: m.resource
            for m in store.search(
                db, "MedicationDispense", [("patient", f"Patient/{visit.patient_id}")]
            ).matches
        }
    assert len(dispensed) == 3
    assert {e["dispense_id"] for e in dispensed} == set(handed)
    lines = []
    for event in dispensed:
        assert (event["encounter_id"], event["patient_id"]) == (visit.encounter_id, visit.patient_id)
        assert event["dispensed_at"] == handed[event["dispense_id"]]["whenHandedOver"]
        (item,) = event["items"]
        assert item["quantity"] == handed[event["dispense_id"]]["quantity"]["value"]
        lines.append((item["line_id"], item["item_code"], item["quantity"]))
    assert lines == [(warfarin, "VTS0012", 4), (warfarin, "VTS0012", 6), (aspirin, "VTS0010", 10)]

    with app.app_context(), get_database(app).session_scope() as db:
        load_demo_prices(db)
    for event in dispensed + dispensed:
        handle(app, "medication.dispensed", event)
    with app.app_context(), get_database(app).session_scope() as db:
        charges = sorted(
            (c.item_code, c.quantity, c.status) for c in charges_of_encounter(db, visit.encounter_id)
        )
    assert charges == [
        ("VTS0010", Decimal(10), "billable"),
        ("VTS0012", Decimal(4), "billable"),
        ("VTS0012", Decimal(6), "billable"),
    ]


def test_two_nurses_marking_one_order_at_once_make_one_procedure(
    app: Flask, make_visit: Callable[..., Visit], make_user: Callable[..., User], doctor: User
) -> None:
    import threading

    from his.db import begin_immediate
    from his.errors import Conflict
    from his.records import services

    from .conftest import actor_of, unit_of_work

    visit = make_visit()
    nurses = [make_user("nurse"), make_user("nurse")]
    with unit_of_work(app) as session:
        order_id = services.add_order(
            session, visit.encounter_id, "", "", actor_of(doctor), service_code="XN.HBA1C"
        )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def perform(nurse: User) -> None:
        with app.app_context(), get_database(app).session_scope() as session:
            barrier.wait(timeout=10)
            if session.get_bind().dialect.name == "sqlite":
                begin_immediate(session)
            try:
                services.perform_order(session, visit.encounter_id, order_id, actor_of(nurse))
                outcomes.append("performed")
            except Conflict as exc:
                outcomes.append(exc.code)
                session.rollback()

    with listening(app, "service.performed") as performed:
        threads = [threading.Thread(target=perform, args=(n,)) for n in nurses]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(outcomes) == ["ORDER_ALREADY_PERFORMED", "performed"]
    assert [e["item_code"] for e in performed] == ["XN.HBA1C"]
    with app.app_context(), get_database(app).session_scope() as db:
        procedures = store.search(db, "Procedure", [("patient", f"Patient/{visit.patient_id}")]).matches
        assert [p.id for p in procedures] == [performed[0]["performed_id"]]
