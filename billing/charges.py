"""Record what a patient is charged for: priced from the dated price list, once per source.

Other contexts call :func:`record_charge` (directly, or through the events handled in
``billing.subscribers``); a cashier adds a charge by hand with :func:`add_manual_charge`
and takes one back with :func:`void_charge`. Every charge is a FHIR ChargeItem in the
store and a row of ``billing_charges``; the row's unique ``source`` makes a repeated
event or a retried call return the first charge instead of charging twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import fhir_mapping
from billing.copay import PriceMissing
from billing.models import Charge
from billing.services import price_on
from fhir import services as store
from his.db import utcnow
from his.errors import N_, Conflict, NotFound, ValidationFailed

DEFAULT_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
MAX_QUANTITY = Decimal("100000")
_MILLI = Decimal("0.001")


class InvalidCharge(ValidationFailed):
    """A charge's quantity, item, reason or source cannot be recorded."""

    code = "BILLING_INVALID_CHARGE"
    message = N_("The charge is not valid.")


class ChargeNotFound(NotFound):
    code = "BILLING_CHARGE_NOT_FOUND"
    message = N_("There is no such charge.")


class ChargeLocked(Conflict):
    """The charge is already on a paid invoice, or already voided."""

    code = "BILLING_CHARGE_LOCKED"
    message = N_("This charge can no longer be changed.")


@dataclass(frozen=True)
class ChargeOutcome:
    """The charge a call produced, and whether this call created it (False: it existed)."""

    charge: Charge
    created: bool


def _invalid(field: str, message: str) -> InvalidCharge:
    return InvalidCharge(message, fields={field: message})


def check_quantity(value: object) -> Decimal:
    """Return a quantity as an exact Decimal with at most 3 decimals.

    Raises InvalidCharge for a value that is not a number, not positive, has more than 3
    decimals or is absurdly large.
    """
    try:
        quantity = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise _invalid("quantity", N_("Enter a number.")) from None
    if not quantity.is_finite():
        raise _invalid("quantity", N_("Enter a number."))
    if quantity <= 0:
        raise _invalid("quantity", N_("The quantity must be greater than zero."))
    if quantity != quantity.quantize(_MILLI):
        raise _invalid("quantity", N_("A quantity has at most 3 decimals."))
    if quantity > MAX_QUANTITY:
        raise _invalid("quantity", N_("The quantity is too large."))
    return quantity.quantize(_MILLI)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def find_by_source(session: Session, source: str) -> Charge | None:
    """Return the charge recorded for ``source``, if any."""
    return session.scalars(select(Charge).where(Charge.source == source)).first()


def record_charge(
    session: Session,
    patient_id: str,
    encounter_id: str,
    item_code: str,
    quantity: Decimal | int | str,
    when: datetime,
    source: str,
    *,
    zone: ZoneInfo = DEFAULT_ZONE,
    entered_by: str | None = None,
    note: str | None = None,
) -> ChargeOutcome:
    """Charge a patient's encounter for ``quantity`` of ``item_code``, priced on the day of ``when``.

    Idempotent by ``source``: a second call with the same source (a repeated event, a
    retry, a concurrent duplicate) returns the first charge with ``created=False`` and
    writes nothing. An item without a price that day is recorded as ``flagged`` (shown
    to the cashier, never billed as zero). Never commits.

    Raises InvalidCharge for a bad quantity, an empty source or item code, or an
    encounter of another patient, and NotFound when the encounter does not exist.
    """
    source = source.strip()
    item_code = item_code.strip()
    if not source or len(source) > 200:
        raise _invalid("source", N_("A charge needs a source of at most 200 characters."))
    if not item_code:
        raise _invalid("item_code", N_("Choose an item from the price list."))
    existing = find_by_source(session, source)
    if existing is not None:
        return ChargeOutcome(existing, created=False)
    amount = check_quantity(quantity)
    subject = (store.read(session, "Encounter", encounter_id).resource.get("subject") or {}).get("reference")
    if subject != f"Patient/{patient_id}":
        raise _invalid("encounter_id", N_("The encounter belongs to another patient."))
    occurred_at = _aware(when)
    day = occurred_at.astimezone(zone).date()
    try:
        entry = price_on(session, item_code, day)
    except PriceMissing:
        entry = None
    now = utcnow()
    status = "billable" if entry is not None else "flagged"
    description = entry.name if entry is not None else item_code
    try:
        with session.begin_nested():
            stored = store.create(
                session,
                fhir_mapping.charge_item(
                    status="billable" if entry is not None else "planned",
                    patient_id=patient_id,
                    encounter_id=encounter_id,
                    source=source,
                    item_code=item_code,
                    description=description,
                    quantity=amount,
                    unit_price=entry.price if entry is not None else None,
                    occurred_at=occurred_at,
                    entered_at=now,
                    note=note,
                ),
            )
            charge = Charge(
                source=source,
                patient_id=patient_id,
                encounter_id=encounter_id,
                charge_item_id=stored.id,
                item_code=item_code,
                description=description,
                kind=entry.kind if entry is not None else "other",
                unit=entry.unit if entry is not None else "",
                xml_group=entry.xml_group if entry is not None else None,
                quantity=amount,
                unit_price=entry.price if entry is not None else None,
                insurance_unit_price=entry.insurance_price if entry is not None else None,
                occurred_at=occurred_at,
                service_day=day,
                status=status,
                entered_by=entered_by,
                note=note,
                created_at=now,
            )
            session.add(charge)
            session.flush()
    except IntegrityError:
        # A concurrent call with the same source committed first: its charge is the charge.
        winner = find_by_source(session, source)
        if winner is None:
            raise
        return ChargeOutcome(winner, created=False)
    return ChargeOutcome(charge, created=True)


def _clean_reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise _invalid("reason", N_("Give a reason."))
    if len(text) > 500:
        raise _invalid("reason", N_("The reason is at most 500 characters."))
    return text


def add_manual_charge(
    session: Session,
    *,
    patient_id: str,
    encounter_id: str,
    item_code: str,
    quantity: Decimal | int | str,
    when: datetime,
    reason: str,
    cashier: str,
    zone: ZoneInfo = DEFAULT_ZONE,
) -> Charge:
    """Add a charge a cashier entered by hand, with the reason they gave.

    Raises InvalidCharge for an empty reason or a bad quantity, and InvoiceClosed when
    the encounter's invoice is already paid.
    """
    from billing.invoices import ensure_invoice_open

    text = _clean_reason(reason)
    ensure_invoice_open(session, encounter_id)
    outcome = record_charge(
        session,
        patient_id,
        encounter_id,
        item_code,
        quantity,
        when,
        f"manual:{uuid.uuid4()}",
        zone=zone,
        entered_by=cashier,
        note=text,
    )
    return outcome.charge


def void_charge(session: Session, charge_id: int, *, reason: str, cashier: str) -> Charge:
    """Take a charge off the bill, keeping it (and the reason) on record.

    Raises ChargeNotFound, InvalidCharge for an empty reason, and ChargeLocked when the
    charge is already voided or its invoice is paid.
    """
    from billing.invoices import ensure_invoice_open

    text = _clean_reason(reason)
    charge = session.get(Charge, charge_id)
    if charge is None:
        raise ChargeNotFound()
    if charge.status == "voided":
        raise ChargeLocked(N_("This charge is already voided."))
    ensure_invoice_open(session, charge.encounter_id)
    charge.status = "voided"
    charge.void_reason = text
    charge.voided_by = cashier
    charge.voided_at = utcnow()
    resource = store.read(session, "ChargeItem", charge.charge_item_id).resource
    resource["status"] = "entered-in-error"
    resource["note"] = [*resource.get("note", []), {"text": text, "authorString": cashier}]
    store.update(session, "ChargeItem", charge.charge_item_id, resource)
    session.flush()
    return charge


def charges_of_encounter(session: Session, encounter_id: str) -> list[Charge]:
    """Return every charge of an encounter (voided ones too), oldest first."""
    return list(
        session.scalars(
            select(Charge).where(Charge.encounter_id == encounter_id).order_by(Charge.occurred_at, Charge.id)
        )
    )


def service_day(moment: datetime, zone: ZoneInfo = DEFAULT_ZONE) -> date:
    """Return the hospital's calendar day of a moment."""
    return _aware(moment).astimezone(zone).date()
