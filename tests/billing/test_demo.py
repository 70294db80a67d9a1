"""The demo's prices cover the records seed drugs, so a drug dispensed in the demo is charged."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from billing.demo import load_demo_prices
from billing.models import Charge, PriceEntry
from billing.subscribers import handle
from his.db import get_database
from his.records.catalogue import seed_drugs


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
