"""Charges: priced from the dated list on the day they happen, once per source, flagged when unpriced."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billing.charges import InvalidCharge, check_quantity, record_charge, void_charge
from billing.models import Charge
from billing.subscribers import ChargeListener
from fhir import services as store
from his import events
from his.db import begin_immediate, get_database

from .conftest import VISIT_AT


def _count(session, model=Charge) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_charge_takes_the_price_of_the_hospitals_day(app, prices, patient, encounter):
    # 18:00 UTC on 30 June is already 1 July in Hà Nội, when the new visit price starts.
    evening = datetime(2025, 6, 30, 18, 0, tzinfo=UTC)
    with get_database(app).session_scope() as session:
        outcome = record_charge(session, patient, encounter, "KB01", 1, evening, "test:visit")
        assert outcome.created
        assert outcome.charge.unit_price == Decimal("50600")
        assert outcome.charge.service_day.isoformat() == "2025-07-01"
        item = store.read(session, "ChargeItem", outcome.charge.charge_item_id).resource
    assert item["status"] == "billable"
    assert item["priceOverride"] == {"value": Decimal("50600"), "currency": "VND"}
    assert item["context"] == {"reference": f"Encounter/{encounter}"}
    assert item["code"]["coding"][0]["code"] == "KB01"


def test_the_same_source_never_charges_twice(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        first = record_charge(session, patient, encounter, "TH01", "20", VISIT_AT, "medication.dispensed:7:1")
        again = record_charge(session, patient, encounter, "TH01", "20", VISIT_AT, "medication.dispensed:7:1")
        assert first.created
        assert not again.created
        assert again.charge.id == first.charge.id
        assert _count(session) == 1
        assert store.search(session, "ChargeItem", {"subject": f"Patient/{patient}"}).total == 1


def test_concurrent_duplicates_charge_once(app, prices, patient, encounter):
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            barrier.wait()
            with get_database(app).session_scope() as session:
                begin_immediate(session)
                record_charge(session, patient, encounter, "SA01", 1, VISIT_AT, "service.performed:42")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with get_database(app).session_scope() as session:
        assert _count(session) == 1
        assert store.search(session, "ChargeItem", {"subject": f"Patient/{patient}"}).total == 1


def test_an_item_without_a_price_is_flagged_not_zero(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        charge = record_charge(session, patient, encounter, "CT01", 1, VISIT_AT, "service.performed:1").charge
        assert (charge.status, charge.unit_price) == ("flagged", None)
        item = store.read(session, "ChargeItem", charge.charge_item_id).resource
    assert item["status"] == "planned"
    assert "priceOverride" not in item


@pytest.mark.parametrize(
    ("quantity", "field"), [("0", "quantity"), ("-1", "quantity"), ("1.0005", "quantity"), ("x", "quantity")]
)
def test_a_bad_quantity_is_refused(quantity, field):
    with pytest.raises(InvalidCharge) as caught:
        check_quantity(quantity)
    assert field in caught.value.fields


def test_voiding_keeps_the_charge_and_its_reason(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        charge = record_charge(session, patient, encounter, "XN01", 1, VISIT_AT, "s:1").charge
        void_charge(session, charge.id, reason="Ordered twice", cashier="thungan")
        item = store.read(session, "ChargeItem", charge.charge_item_id).resource
        with pytest.raises(InvalidCharge):
            void_charge(session, charge.id, reason="  ", cashier="thungan")
    assert item["status"] == "entered-in-error"
    assert item["note"][-1]["text"] == "Ordered twice"


def test_events_charge_the_visit_services_and_drugs_once(app, prices, patient, encounter):
    listener = ChargeListener(app).start()
    try:
        with app.app_context():
            checked_in = {
                "encounter_id": encounter,
                "patient_id": patient,
                "visit_code": "KB01",
                "checked_in_at": "2025-09-10T02:00:00Z",
            }
            events.publish("encounter.checked_in", checked_in)
            events.publish("encounter.checked_in", checked_in)  # delivered twice
            events.publish(
                "medication.dispensed",
                {
                    "dispense_id": "d1",
                    "encounter_id": encounter,
                    "patient_id": patient,
                    "dispensed_at": "2025-09-10T03:00:00Z",
                    "items": [{"line_id": "1", "item_code": "TH01", "quantity": 10}],
                },
            )
            events.publish(
                "service.performed",
                {
                    "performed_id": "p1",
                    "encounter_id": encounter,
                    "patient_id": patient,
                    "item_code": "SA01",
                    "performed_at": "2025-09-10T02:30:00Z",
                },
            )
        deadline = datetime.now(UTC).timestamp() + 10
        while datetime.now(UTC).timestamp() < deadline:
            with get_database(app).session_scope() as session:
                if _count(session) >= 3:
                    break
            threading.Event().wait(0.05)
    finally:
        listener.stop()
    with get_database(app).session_scope() as session:
        charges = session.scalars(select(Charge).order_by(Charge.item_code)).all()
        assert [(c.item_code, c.quantity, c.unit_price) for c in charges] == [
            ("KB01", Decimal("1"), Decimal("50600")),
            ("SA01", Decimal("1"), Decimal("250000")),
            ("TH01", Decimal("10"), Decimal("1234.5")),
        ]


def test_a_charge_cannot_land_on_another_patients_encounter(app, prices, make_patient, encounter):
    stranger = make_patient(name="Lê Văn Khác")
    with get_database(app).session_scope() as session, pytest.raises(InvalidCharge) as caught:
        record_charge(session, stranger, encounter, "KB01", 1, VISIT_AT, "wrong")
    assert "encounter_id" in caught.value.fields


@pytest.fixture
def listening(settings_overrides):
    """Build the app with billing's event listener on, as a serving process has it."""
    settings_overrides["extra"] = {"vetinh_billing_event_listener": True}
    return settings_overrides


def test_a_serving_app_charges_the_visit_fee_when_a_check_in_is_published(
    listening, app, prices, patient, encounter
):
    listener = app.extensions["billing.charge_listener"]
    try:
        with app.test_client() as client:
            event = {
                "encounter_id": encounter,
                "patient_id": patient,
                "visit_code": "KB01",
                "checked_in_at": "2025-09-10T02:00:00Z",
            }
            assert (
                client.post(
                    "/api/v1/events/test", json={"topic": "encounter.checked_in", "data": event}
                ).status_code
                == 202
            )
        for _ in range(100):
            with get_database(app).session_scope() as session:
                if _count(session):
                    break
            threading.Event().wait(0.05)
        with get_database(app).session_scope() as session:
            assert [c.source for c in session.scalars(select(Charge))] == [
                f"encounter.checked_in:{encounter}"
            ]
    finally:
        listener.stop()


def test_a_one_off_app_does_not_listen(app):
    assert "billing.charge_listener" not in app.extensions
