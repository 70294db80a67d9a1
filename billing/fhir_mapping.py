"""Map billing values to FHIR R4 ChargeItem, Coverage and Invoice resources (pure functions)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing.bhyt import INSURANCE_NUMBER_SYSTEM

CHARGE_SOURCE_SYSTEM = "urn:vetinh:billing:charge-source"
PRICE_CODE_SYSTEM = "urn:vetinh:billing:price-code"
INVOICE_REFERENCE_SYSTEM = "urn:vetinh:billing:invoice"
REGISTERED_FACILITY_EXTENSION = "urn:vetinh:billing:registered-facility"
FIVE_YEARS_EXTENSION = "urn:vetinh:billing:five-years-continuous-from"
COVERAGE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/coverage-class"
BHYT_PAYOR = "Bảo hiểm xã hội Việt Nam"
CURRENCY = "VND"


def instant(moment: datetime) -> str:
    """Format an aware (or naive-UTC) time as a FHIR instant."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


def plain(value: Decimal) -> Decimal:
    """Return ``value`` without trailing zeros and never in exponent form (``10``, not ``1E+1``)."""
    return Decimal(format(value.normalize(), "f"))


def money(amount: Decimal) -> dict[str, Any]:
    """Return a FHIR Money in đồng, written exactly."""
    return {"value": plain(amount), "currency": CURRENCY}


def charge_item(
    *,
    status: str,
    patient_id: str,
    encounter_id: str,
    source: str,
    item_code: str,
    description: str,
    quantity: Decimal,
    unit_price: Decimal | None,
    occurred_at: datetime,
    entered_at: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """Describe one charge; ``unit_price`` None (a missing price) leaves the price out, never zero."""
    resource: dict[str, Any] = {
        "resourceType": "ChargeItem",
        "identifier": [{"system": CHARGE_SOURCE_SYSTEM, "value": source}],
        "status": status,
        "code": {"coding": [{"system": PRICE_CODE_SYSTEM, "code": item_code, "display": description}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "context": {"reference": f"Encounter/{encounter_id}"},
        "occurrenceDateTime": instant(occurred_at),
        "quantity": {"value": plain(quantity)},
        "enteredDate": instant(entered_at),
    }
    if unit_price is not None:
        resource["priceOverride"] = money(unit_price)
    if note:
        resource["note"] = [{"text": note}]
    return resource


def coverage(
    *,
    patient_id: str,
    card_code: str,
    valid_from: date | None,
    valid_to: date | None,
    registered_facility: str | None,
    five_years_from: date | None,
    status: str = "active",
) -> dict[str, Any]:
    """Describe a BHYT card as the patient's Coverage (payor: Vietnam Social Security)."""
    resource: dict[str, Any] = {
        "resourceType": "Coverage",
        "identifier": [{"system": INSURANCE_NUMBER_SYSTEM, "value": card_code}],
        "status": status,
        "subscriberId": card_code,
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "payor": [{"display": BHYT_PAYOR}],
        "class": [
            {
                "type": {"coding": [{"system": COVERAGE_CLASS_SYSTEM, "code": "group"}]},
                "value": card_code[:2],
                "name": f"Mức hưởng {card_code[2]}",
            }
        ],
    }
    period: dict[str, str] = {}
    if valid_from is not None:
        period["start"] = valid_from.isoformat()
    if valid_to is not None:
        period["end"] = valid_to.isoformat()
    if period:
        resource["period"] = period
    extensions: list[dict[str, Any]] = []
    if registered_facility:
        extensions.append({"url": REGISTERED_FACILITY_EXTENSION, "valueString": registered_facility})
    if five_years_from is not None:
        extensions.append({"url": FIVE_YEARS_EXTENSION, "valueDate": five_years_from.isoformat()})
    if extensions:
        resource["extension"] = extensions
    return resource


def invoice(
    *,
    reference: str,
    status: str,
    patient_id: str,
    issued_at: datetime,
    lines: list[dict[str, Any]],
    total: Decimal,
    patient_total: Decimal,
) -> dict[str, Any]:
    """Describe an invoice: per line its base price and the fund's deduction; net is the patient's part.

    Each of ``lines`` holds ``charge_item_id``, ``total`` and ``fund``.
    """
    line_items = []
    for sequence, line in enumerate(lines, start=1):
        components: list[dict[str, Any]] = [{"type": "base", "amount": money(line["total"])}]
        if line["fund"]:
            components.append({"type": "deduction", "code": {"text": "BHYT"}, "amount": money(line["fund"])})
        line_items.append(
            {
                "sequence": sequence,
                "chargeItemReference": {"reference": f"ChargeItem/{line['charge_item_id']}"},
                "priceComponent": components,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Invoice",
        "identifier": [{"system": INVOICE_REFERENCE_SYSTEM, "value": reference}],
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": instant(issued_at),
        "totalGross": money(total),
        "totalNet": money(patient_total),
    }
    if line_items:
        resource["lineItem"] = line_items
    return resource
