"""Bill each encounter once: its charges split between the BHYT fund and the patient, line by line.

The split itself is ``billing.copay.split_invoice``; this module gathers its inputs (the
encounter's charges, the patient's card, this year's earlier co-payments) and keeps the
result in ``billing_invoices``/``billing_invoice_lines`` and as a FHIR Invoice. An invoice
is recomputed whenever it is opened, so a charge recorded later (a drug dispensed after
payment) reopens it with a new balance instead of being lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import fhir_mapping
from billing.bhyt import Referral, referral_status
from billing.charges import DEFAULT_ZONE, charges_of_encounter, service_day
from billing.copay import Coverage, InvoiceLine, PriceMissing, split_invoice
from billing.coverage import active_coverage, to_card
from billing.models import Charge, Invoice, InvoiceLineRecord
from billing.receipts import issue_receipt
from billing.rules import CareSetting, FacilityLevel
from billing.services import price_on
from fhir import services as store
from his.db import as_utc, utcnow
from his.errors import N_, Conflict, NotFound

ZERO = Decimal(0)


class InvoiceNotFound(NotFound):
    code = "BILLING_INVOICE_NOT_FOUND"
    message = N_("There is no such invoice.")


class InvoiceClosed(Conflict):
    """The invoice is paid; its charges are no longer changed by hand."""

    code = "BILLING_INVOICE_PAID"
    message = N_("This invoice is already paid; refund it before changing its charges.")


class UnpricedCharges(Conflict):
    """Some charges have no price; the invoice cannot be collected until they do."""

    code = "BILLING_UNPRICED_CHARGES"
    message = N_("Some charges have no price yet; price or void them before collecting payment.")


@dataclass(frozen=True)
class Facility:
    """The treating facility, as the referral rules need it."""

    code: str
    level: FacilityLevel = FacilityLevel.PRIMARY
    care: CareSetting = CareSetting.OUTPATIENT


def ensure_invoice_open(session: Session, encounter_id: str) -> None:
    """Raise InvoiceClosed when the encounter's invoice is paid."""
    status = session.scalar(select(Invoice.status).where(Invoice.encounter_id == encounter_id))
    if status == "paid":
        raise InvoiceClosed()


def _encounter_facts(session: Session, encounter_id: str, zone: ZoneInfo) -> tuple[str, date | None]:
    resource = store.read(session, "Encounter", encounter_id).resource
    reference = str((resource.get("subject") or {}).get("reference") or "")
    if not reference.startswith("Patient/"):
        raise InvoiceNotFound(N_("The encounter names no patient."))
    start = (resource.get("period") or {}).get("start")
    day: date | None = None
    if isinstance(start, str):
        try:
            day = service_day(datetime.fromisoformat(start.replace("Z", "+00:00")), zone)
        except ValueError:
            day = None
    return reference.removeprefix("Patient/"), day


def _reprice_flagged(session: Session, charges: list[Charge]) -> None:
    """Give flagged charges the price that has since been imported for their day."""
    for charge in charges:
        if charge.status != "flagged":
            continue
        try:
            entry = price_on(session, charge.item_code, charge.service_day)
        except PriceMissing:
            continue
        charge.status = "billable"
        charge.description = entry.name
        charge.kind = entry.kind
        charge.unit = entry.unit
        charge.xml_group = entry.xml_group
        charge.unit_price = entry.price
        charge.insurance_unit_price = entry.insurance_price
        resource = store.read(session, "ChargeItem", charge.charge_item_id).resource
        resource["status"] = "billable"
        resource["priceOverride"] = fhir_mapping.money(entry.price)
        resource["code"]["coding"][0]["display"] = entry.name
        store.update(session, "ChargeItem", charge.charge_item_id, resource)


def _copaid_before(session: Session, invoice: Invoice) -> Decimal:
    """Return the patient's co-payments on earlier visits of the same calendar year."""
    start = date(invoice.visit_date.year, 1, 1)
    rows = session.scalars(
        select(Invoice).where(
            Invoice.patient_id == invoice.patient_id,
            Invoice.id != invoice.id,
            Invoice.visit_date >= start,
            Invoice.visit_date <= invoice.visit_date,
        )
    )
    return sum(
        (
            row.copay
            for row in rows
            if row.amount_paid > 0 and (row.visit_date, row.id) < (invoice.visit_date, invoice.id)
        ),
        ZERO,
    )


def get_or_create_invoice(session: Session, encounter_id: str, *, zone: ZoneInfo = DEFAULT_ZONE) -> Invoice:
    """Return the encounter's invoice, creating an empty one the first time.

    Raises NotFound when the encounter is not in the FHIR store.
    """
    invoice = session.scalars(select(Invoice).where(Invoice.encounter_id == encounter_id)).first()
    if invoice is not None:
        return invoice
    patient_id, day = _encounter_facts(session, encounter_id, zone)
    if day is None:
        first = session.scalar(
            select(func.min(Charge.service_day)).where(Charge.encounter_id == encounter_id)
        )
        day = first or service_day(utcnow(), zone)
    try:
        with session.begin_nested():
            invoice = Invoice(
                encounter_id=encounter_id,
                patient_id=patient_id,
                visit_date=day,
                status="open",
                reasons="",
                total=ZERO,
                fund=ZERO,
                copay=ZERO,
                patient_full=ZERO,
                amount_due=ZERO,
                amount_paid=ZERO,
            )
            session.add(invoice)
            session.flush()
            invoice.reference = f"VP{day.year}{invoice.id:06d}"
            session.flush()
    except IntegrityError:
        # Opened at the same moment by another cashier: theirs is the invoice.
        winner = session.scalars(select(Invoice).where(Invoice.encounter_id == encounter_id)).first()
        if winner is None:
            raise
        return winner
    return invoice


def refresh_invoice(session: Session, invoice: Invoice, facility: Facility) -> Invoice:
    """Recompute an invoice from its encounter's charges and the patient's card; update its FHIR Invoice.

    An invoice that this leaves paid (a voided charge may) gets its receipt number.
    Raises CardExpired, InvalidInvoiceLine or NoRuleInForce from the split.
    """
    charges = charges_of_encounter(session, invoice.encounter_id)
    _reprice_flagged(session, charges)
    billable = [charge for charge in charges if charge.status == "billable"]
    record = active_coverage(session, invoice.patient_id, invoice.visit_date)
    coverage = Coverage(card=None)
    if record is not None:
        card = to_card(record)
        referral = referral_status(card, facility_code=facility.code)
        coverage = Coverage(
            card=card,
            referral=referral,
            facility_level=facility.level,
            care=facility.care,
            five_years_continuous=(
                record.five_years_from is not None and record.five_years_from <= invoice.visit_date
            ),
            copaid_this_year=_copaid_before(session, invoice),
        )
    split = split_invoice(
        [
            InvoiceLine(
                code=charge.item_code,
                description=charge.description,
                quantity=charge.quantity,
                unit_price=charge.unit_price,
                insurance_unit_price=charge.insurance_unit_price,
            )
            for charge in billable
        ],
        coverage,
        invoice.visit_date,
    )
    invoice.coverage_id = record.id if record is not None else None
    invoice.benefit_level = split.benefit_level
    invoice.reasons = ",".join(sorted(reason.value for reason in split.reasons))
    invoice.total = split.total
    invoice.fund = split.fund
    invoice.copay = split.copay
    invoice.patient_full = split.patient_full
    invoice.amount_due = split.amount_due
    fresh = [
        (charge.id, charge.item_code, charge.description, charge.quantity, line.unit_price, line.total,
         line.covered, line.fund, line.copay, line.patient_full)
        for charge, line in zip(billable, split.lines, strict=True)
    ]  # fmt: skip
    kept = [
        (row.charge_id, row.code, row.description, row.quantity, row.unit_price, row.total, row.covered,
         row.fund, row.copay, row.patient_full)
        for row in invoice.lines
    ]  # fmt: skip
    if fresh != kept:
        invoice.lines = [
            InvoiceLineRecord(
                charge_id=values[0],
                position=position,
                code=values[1],
                description=values[2],
                quantity=values[3],
                unit_price=values[4],
                total=values[5],
                covered=values[6],
                fund=values[7],
                copay=values[8],
                patient_full=values[9],
            )
            for position, values in enumerate(fresh, start=1)
        ]
    settle(invoice)
    session.flush()
    if invoice.status == "paid":
        # A voided charge can leave what was already paid covering the whole bill.
        issue_receipt(session, invoice)
    _write_fhir_invoice(session, invoice, billable)
    return invoice


def settle(invoice: Invoice) -> None:
    """Set the invoice's status from what is due and what was paid."""
    if invoice.amount_paid > 0 and invoice.balance <= 0:
        if invoice.status != "paid":
            invoice.paid_at = utcnow()
        invoice.status = "paid"
    else:
        invoice.status = "open"
        invoice.paid_at = None


def _write_fhir_invoice(session: Session, invoice: Invoice, billable: list[Charge]) -> None:
    resource = fhir_mapping.invoice(
        reference=invoice.reference or "",
        status="balanced" if invoice.status == "paid" else "issued",
        patient_id=invoice.patient_id,
        issued_at=as_utc(invoice.created_at),
        lines=[
            {"charge_item_id": charge.charge_item_id, "total": line.total, "fund": line.fund}
            for charge, line in zip(billable, invoice.lines, strict=True)
        ],
        total=invoice.total,
        patient_total=invoice.copay + invoice.patient_full,
    )
    if invoice.invoice_resource_id is None:
        invoice.invoice_resource_id = store.create(session, resource).id
        return
    current = store.read(session, "Invoice", invoice.invoice_resource_id).resource
    current.pop("meta", None)
    resource["id"] = invoice.invoice_resource_id
    # Opening an unchanged invoice must not pile up identical versions in the store.
    if current != resource:
        store.update(session, "Invoice", invoice.invoice_resource_id, resource)


def open_invoice(
    session: Session, encounter_id: str, facility: Facility, *, zone: ZoneInfo = DEFAULT_ZONE
) -> Invoice:
    """Return the encounter's invoice, brought up to date with its charges. Never commits.

    Raises NotFound when the encounter does not exist, and the split's errors.
    """
    invoice = get_or_create_invoice(session, encounter_id, zone=zone)
    return refresh_invoice(session, invoice, facility)


def unpriced_charges(session: Session, encounter_id: str) -> list[Charge]:
    """Return the encounter's charges that still have no price."""
    return [charge for charge in charges_of_encounter(session, encounter_id) if charge.status == "flagged"]


def ensure_collectable(session: Session, invoice: Invoice) -> None:
    """Raise UnpricedCharges while any charge of the invoice's encounter has no price."""
    missing = unpriced_charges(session, invoice.encounter_id)
    if missing:
        raise UnpricedCharges(extra={"item_codes": sorted({charge.item_code for charge in missing})})


def get_invoice(session: Session, invoice_id: int, *, lock: bool = False) -> Invoice:
    """Return an invoice by id, locked for update when asked (PostgreSQL).

    Raises InvoiceNotFound.
    """
    if lock:
        invoice = session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
    else:
        invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        raise InvoiceNotFound()
    return invoice


def invoice_by_reference(session: Session, reference: str) -> Invoice | None:
    """Return the invoice with this reference (``VP2026000123``), if any."""
    return session.scalars(select(Invoice).where(Invoice.reference == reference.upper())).first()


def referral_of(invoice: Invoice, facility: Facility, session: Session) -> Referral | None:
    """Return how the patient came, by their card (None without a card)."""
    record = active_coverage(session, invoice.patient_id, invoice.visit_date)
    if record is None:
        return None
    return referral_status(to_card(record), facility_code=facility.code)
