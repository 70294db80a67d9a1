"""Give the demo its (clearly labelled) demonstration price list and the demo patient's bills on ``vetinh demo``.

Besides the CSV of visits and services, every drug of the records context's seed
catalogue gets a price (its catalogue price, from the same date as the demo list), so a
drug dispensed in the demo is charged instead of flagged. The drugs come from the
records service, never from its tables.

The demo patient account ("patient") then gets two visits at the district hospital,
made the way real ones are: an Encounter in the FHIR store, charges priced from the list,
an invoice split by billing's own rules. The earlier visit was paid by a VietQR transfer
that went through the same code a bank notice takes (so its receipt is numbered and its
PDF can be downloaded); today's visit waits for payment, so its QR is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.charges import record_charge
from billing.invoices import Facility, open_invoice
from billing.models import Invoice
from billing.payments import read_transfer, receive_notification, transfer_note
from billing.services import (
    DEMO_PRICE_LIST,
    ImportResult,
    PriceRow,
    check_price_row,
    import_prices,
    read_price_csv,
)
from fhir import services as store
from his.demo import register_demo_loader
from his.models import Site, User
from his.records.catalogue import seed_drugs

DEMO_PRICES_FROM = date(2024, 7, 1)
DRUG_XML_GROUP = "4"  # XML 130 MA_NHOM: drug in the fund's list
DEMO_ENCOUNTER_SYSTEM = "urn:vetinh:demo:billing:encounter"
ENCOUNTER_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@dataclass(frozen=True)
class DemoVisit:
    """One demo visit: its key, how many days ago and when, and what it was charged for."""

    key: str
    days_ago: int
    at: time
    items: tuple[tuple[str, int], ...]
    paid: bool


DEMO_VISITS = (
    # Visit fee, a blood glucose test, an ECG, and the drugs dispensed: paid by VietQR.
    DemoVisit(
        "paid-visit",
        3,
        time(8, 30),
        (("KB.NOI", 1), ("XN.GLU", 1), ("TDCN.ECG", 1), ("VTS0001", 10), ("VTS0020", 14)),
        True,
    ),
    # Today's visit fee and a blood count: waiting for payment.
    DemoVisit("open-visit", 0, time(7, 45), (("KB.NOI", 1), ("XN.CTM", 1)), False),
)


def seed_drug_prices(valid_from: date = DEMO_PRICES_FROM) -> list[PriceRow]:
    """Return a price row (kind ``drug``, at its catalogue price) for each drug of the seed catalogue.

    Raises RowError when a catalogue entry cannot be a price-list row (a bad code or price).
    """
    return [
        check_price_row(
            {
                "code": drug.code,
                "name": drug.name,
                "kind": "drug",
                "unit": drug.unit,
                "price": format(drug.price, "f"),
                "insurance_price": "",
                "valid_from": valid_from.isoformat(),
                "valid_to": "",
                "xml_group": DRUG_XML_GROUP,
            }
        )
        for drug in sorted(seed_drugs().values(), key=lambda drug: drug.code)
    ]


def load_demo_prices(session: Session) -> ImportResult:
    """Import the demonstration price list and the seed drugs' prices (the same path a hospital's CSV takes)."""
    rows = read_price_csv(DEMO_PRICE_LIST.read_bytes()) + seed_drug_prices()
    return import_prices(session, rows)


def _zone() -> ZoneInfo:
    name = current_app.extensions["vetinh.settings"].timezone if has_app_context() else "Asia/Ho_Chi_Minh"
    return ZoneInfo(name)


def _demo_encounter(session: Session, patient_id: str, site: Site, visit: DemoVisit, start: datetime) -> str:
    """Return the visit's Encounter, created in the FHIR store the first time (found by its identifier after)."""
    resource: dict[str, object] = {
        "resourceType": "Encounter",
        "identifier": [{"system": DEMO_ENCOUNTER_SYSTEM, "value": visit.key}],
        "status": "finished" if visit.paid else "arrived",
        "class": {"system": ENCOUNTER_CLASS_SYSTEM, "code": "AMB", "display": "ambulatory"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": start.isoformat()},
    }
    if site.organization_id:
        resource["serviceProvider"] = {"reference": f"Organization/{site.organization_id}"}
    found = store.create(session, resource, if_none_exist=f"identifier={DEMO_ENCOUNTER_SYSTEM}|{visit.key}")
    return found.id


def _pay_by_vietqr(session: Session, invoice: Invoice, paid_at: datetime) -> None:
    """Settle the invoice with the bank notice a VietQR transfer of its balance would bring.

    Raises RuntimeError when the notice is not credited (the demo's prices or invoice are wrong).
    """
    body = json.dumps(
        {
            "transaction_id": f"DEMO{invoice.reference}",
            "amount": int(invoice.balance),
            "description": f"{transfer_note(invoice)} Nguyen Van An chuyen tien",
            "account": "",
            "transacted_at": paid_at.isoformat(),
        }
    )
    outcome = receive_notification(session, read_transfer(body.encode("utf-8")), body)
    if outcome.notification.status != "credited":
        raise RuntimeError(f"The demo transfer for {invoice.reference} was not credited.")


def load_demo_bills(session: Session, sites: dict[str, Site]) -> list[Invoice]:
    """Give the demo patient account a paid visit (with a receipt) and an open one; return their invoices.

    Running it again finds the same encounters, charges, invoices and transfer, and adds
    nothing. Returns an empty list when there is no demo patient account or district site.
    """
    patient = session.scalars(select(User).where(User.username == "patient")).first()
    district = sites.get("DIST")
    if patient is None or patient.patient_id is None or district is None:
        return []
    zone = _zone()
    today = datetime.now(zone).date()
    facility = Facility(code=district.facility_code or "")
    invoices = []
    for visit in DEMO_VISITS:
        # A visit of today never starts in the future, whenever the demo is loaded.
        start = min(
            datetime.combine(today - timedelta(days=visit.days_ago), visit.at, tzinfo=zone),
            datetime.now(zone) - timedelta(minutes=15),
        )
        encounter_id = _demo_encounter(session, patient.patient_id, district, visit, start)
        for position, (code, quantity) in enumerate(visit.items):
            record_charge(
                session,
                patient.patient_id,
                encounter_id,
                code,
                quantity,
                start + timedelta(minutes=10 * position),
                f"demo:{visit.key}:{code}",
                zone=zone,
            )
        invoice = open_invoice(session, encounter_id, facility, zone=zone)
        if visit.paid and invoice.status != "paid":
            _pay_by_vietqr(session, invoice, start + timedelta(hours=1))
        invoices.append(invoice)
    return invoices


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Give the demo its prices (visits, services, every seed drug) and the demo patient's bills."""
    load_demo_prices(session)
    load_demo_bills(session, sites)


register_demo_loader(load_demo, order=40)
