"""The demo's prices cover the records seed drugs, and the demo patient has a paid bill and one to pay."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select

from billing.demo import DEMO_ENCOUNTER_SYSTEM, load_demo_bills, load_demo_prices
from billing.models import BankNotification, Charge, Invoice, Payment, PriceEntry
from billing.services import DEMO_PRICE_LIST, read_price_csv, search_prices
from billing.subscribers import handle
from fhir import services as store
from his.cli import main
from his.db import get_database
from his.models import Site, User
from his.records.catalogue import seed_drugs
from tests.conftest import login


def _dispensed(patient: str, encounter: str, dispense_id: str, item_code: str, quantity: int) -> dict:
    return {
        "dispense_id": dispense_id,
        "encounter_id": encounter,
        "patient_id": patient,
        "dispensed_at": "2025-09-10T03:00:00Z",
        "items": [{"line_id": "1", "item_code": item_code, "quantity": quantity}],
    }


def test_every_seed_drug_has_a_demo_price_at_its_catalogue_price(app):
    with get_database(app).session_scope() as session:
        load_demo_prices(session)
        again = load_demo_prices(session)
        drugs = {
            entry.code: (entry.kind, entry.unit, entry.price, entry.xml_group)
            for entry in session.scalars(select(PriceEntry).where(PriceEntry.code.startswith("VTS")))
        }
    assert again.created == 0  # loading twice adds nothing
    seed = seed_drugs()
    assert len(seed) > 100
    assert drugs == {code: ("drug", drug.unit, drug.price, "4") for code, drug in seed.items()}


def test_a_dispensed_seed_drug_is_charged_at_its_price_and_an_unknown_one_is_flagged(app, patient, encounter):
    with get_database(app).session_scope() as session:
        load_demo_prices(session)
    paracetamol = seed_drugs()["VTS0001"]

    handle(app, "medication.dispensed", _dispensed(patient, encounter, "d1", "VTS0001", 20))
    handle(app, "medication.dispensed", _dispensed(patient, encounter, "d2", "VTS9999", 3))

    with get_database(app).session_scope() as session:
        charges = {
            charge.item_code: (
                charge.status,
                charge.kind,
                charge.unit_price,
                charge.quantity,
                charge.description,
            )
            for charge in session.scalars(select(Charge).where(Charge.encounter_id == encounter))
        }
    assert charges["VTS0001"] == (
        "billable",
        "drug",
        paracetamol.price,
        Decimal("20"),
        paracetamol.name,
    )
    assert charges["VTS9999"][0] == "flagged"
    assert charges["VTS9999"][2] is None


DEMO_PASSWORD = "demo-pass-123"


def _load_whole_demo(app) -> None:
    result = app.test_cli_runner().invoke(main, ["demo", "--if-empty", "--password", DEMO_PASSWORD])
    assert result.exit_code == 0, result.output


def _references(html: str) -> list[str]:
    return sorted(set(re.findall(r"VP[0-9]{10}", html)))


def test_the_demo_patient_has_a_paid_visit_with_a_receipt_and_an_open_one_with_a_qr(app, test_database):
    app.config["VETINH_BANK_BIN"] = "970436"
    app.config["VETINH_BANK_ACCOUNT"] = "0011001234567"
    _load_whole_demo(app)

    cashier = app.test_client()
    login(cashier, "cashier", DEMO_PASSWORD)
    home = cashier.get("/billing").get_data(as_text=True)
    assert "Chưa có hóa đơn" not in home
    references = _references(home)
    assert len(references) == 2

    with get_database(app).session_scope() as session:
        invoices = {
            invoice.status: invoice for invoice in session.scalars(select(Invoice).order_by(Invoice.id))
        }
        paid, still_open = invoices["paid"], invoices["open"]
        paid_id, open_id = paid.id, still_open.id
        assert paid.amount_paid == paid.amount_due > 0
        assert still_open.amount_paid == 0
        assert still_open.balance > 0
        # A real bank notice settled it, and a visit fee, services and drugs were charged.
        notice = session.scalars(select(BankNotification)).one()
        assert (notice.status, notice.invoice_id) == ("credited", paid_id)
        assert [payment.channel for payment in session.scalars(select(Payment))] == ["vietqr"]
        kinds = {
            charge.kind
            for charge in session.scalars(select(Charge).where(Charge.encounter_id == paid.encounter_id))
        }
        assert kinds == {"visit", "service", "drug"}
        encounter = store.read(session, "Encounter", paid.encounter_id).resource
        patient_id = paid.patient_id
        user = session.scalars(select(User).where(User.username == "patient")).one()
        assert encounter["subject"]["reference"] == f"Patient/{user.patient_id}" == f"Patient/{patient_id}"
        assert still_open.patient_id == patient_id

    receipt = cashier.get(f"/billing/invoices/{paid_id}/receipt.pdf")
    assert receipt.status_code == 200
    assert receipt.mimetype == "application/pdf"

    patient = app.test_client()
    login(patient, "patient", DEMO_PASSWORD)
    mine = patient.get("/my/invoices").get_data(as_text=True)
    assert _references(mine) == references
    assert patient.get(f"/billing/invoices/{paid_id}/receipt.pdf").status_code == 200
    waiting = patient.get(f"/my/invoices/{open_id}").get_data(as_text=True)
    assert f"/billing/invoices/{open_id}/vietqr" in waiting
    assert patient.get(f"/billing/invoices/{open_id}/vietqr.png").mimetype == "image/png"


def test_loading_the_demo_bills_again_adds_nothing(app, test_database):
    _load_whole_demo(app)
    with get_database(app).session_scope() as session:
        sites = {site.code: site for site in session.scalars(select(Site))}
        before = [
            session.scalar(select(func.count()).select_from(table)) for table in (Invoice, Charge, Payment)
        ]
        again = load_demo_bills(session, sites)
        after = [
            session.scalar(select(func.count()).select_from(table)) for table in (Invoice, Charge, Payment)
        ]
        encounters = store.search(session, "Encounter", {"identifier": f"{DEMO_ENCOUNTER_SYSTEM}|paid-visit"})
    assert len(again) == 2
    assert before == after
    assert before[0] == 2
    assert len(encounters.matches) == 1


def test_the_demo_prices_each_drug_once_from_the_seed_catalogue(app):
    csv_drugs = [row.code for row in read_price_csv(DEMO_PRICE_LIST.read_bytes()) if row.kind == "drug"]
    assert csv_drugs == []
    with get_database(app).session_scope() as session:
        load_demo_prices(session)
        found = search_prices(session, date.today(), query="amoxicilin 500", kind="drug").entries
        names = [entry.name for entry in found]
    assert names
    assert all(entry_code.startswith("VTS") for entry_code in [entry.code for entry in found])
    assert not any("(demo)" in name for name in names)
