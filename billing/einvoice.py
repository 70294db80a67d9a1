"""Write a paid invoice as an e-invoice (QĐ 1450/QĐ-TCT layout) and hand it to a licensed provider.

The hospital never talks to the tax authority itself: it sends the XML to its e-invoice
provider, which signs, numbers and registers it. Medical services are VAT-exempt
(``TSuat`` = ``KCT``). Each billed line is a good/service line (``TChat`` 1) at the
hospital's price; what the BHYT fund pays is one discount line (``TChat`` 3), so the
invoice's total is what the patient paid. The total is also written in Vietnamese words.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from xml.sax.saxutils import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.fhir_mapping import plain
from billing.models import Charge, Invoice
from billing.words import amount_in_words
from fhir import services as store
from his.errors import N_, Conflict, VetinhError

FORMAT_VERSION = "2.1.0"
VAT_EXEMPT = "KCT"


class ProviderUnavailable(VetinhError):
    """The e-invoice provider is not configured, cannot be reached or refused the invoice."""

    status = 503
    code = "BILLING_EINVOICE_PROVIDER"
    message = N_("The e-invoice provider cannot be reached; try again later.")


@dataclass(frozen=True)
class Party:
    """The seller (the hospital) or the buyer (the patient) of an e-invoice."""

    name: str
    address: str = ""
    tax_code: str = ""
    national_id: str = ""


@dataclass(frozen=True)
class EInvoiceLine:
    """One line: what, how many, at what unit price, for how much."""

    code: str
    name: str
    unit: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


def _element(name: str, value: object) -> str:
    text = format(plain(value), "f") if isinstance(value, Decimal) else str(value)
    return f"<{name}>{escape(text)}</{name}>"


def einvoice_xml(
    *,
    template: str,
    series: str,
    number: int,
    issued_on: date,
    seller: Party,
    buyer: Party,
    lines: Sequence[EInvoiceLine],
    fund_share: Decimal,
    payment_method: str = "TM/CK",
) -> bytes:
    """Write the e-invoice XML (``HDon/DLHDon``) of a paid hospital invoice."""
    items = []
    for index, line in enumerate(lines, start=1):
        items.append(
            "<HHDVu>"
            + _element("TChat", 1)
            + _element("STT", index)
            + _element("MHHDVu", line.code)
            + _element("THHDVu", line.name)
            + _element("DVTinh", line.unit)
            + _element("SLuong", line.quantity)
            + _element("DGia", line.unit_price)
            + _element("ThTien", line.amount)
            + _element("TSuat", VAT_EXEMPT)
            + "</HHDVu>"
        )
    if fund_share:
        items.append(
            "<HHDVu>"
            + _element("TChat", 3)
            + _element("STT", len(lines) + 1)
            + _element("THHDVu", "Quỹ BHYT chi trả")
            + _element("ThTien", fund_share)
            + _element("TSuat", VAT_EXEMPT)
            + "</HHDVu>"
        )
    payable = sum((line.amount for line in lines), Decimal(0)) - fund_share
    payable = payable.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    general = (
        "<TTChung>"
        + _element("PBan", FORMAT_VERSION)
        + _element("THDon", "Hóa đơn bán hàng")
        + _element("KHMSHDon", template)
        + _element("KHHDon", series)
        + _element("SHDon", number)
        + _element("NLap", issued_on.isoformat())
        + _element("DVTTe", "VND")
        + _element("HTTToan", payment_method)
        + "</TTChung>"
    )
    seller_xml = (
        "<NBan>"
        + _element("Ten", seller.name)
        + _element("MST", seller.tax_code)
        + _element("DChi", seller.address)
        + "</NBan>"
    )
    buyer_xml = (
        "<NMua>"
        + _element("Ten", buyer.name)
        + _element("DChi", buyer.address)
        + _element("CCCDan", buyer.national_id)
        + "</NMua>"
    )
    totals = (
        "<TToan>"
        + _element("TgTCThue", payable)
        + _element("TgTThue", Decimal(0))
        + _element("TgTTTBSo", payable)
        + _element("TgTTTBChu", amount_in_words(payable))
        + "</TToan>"
    )
    body = (
        "<HDon><DLHDon>"
        + general
        + "<NDHDon>"
        + seller_xml
        + buyer_xml
        + "<DSHHDVu>"
        + "".join(items)
        + "</DSHHDVu>"
        + totals
        + "</NDHDon></DLHDon></HDon>"
    )
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + body).encode("utf-8")


class EInvoiceProvider:
    """Send e-invoice XML to the hospital's licensed provider over HTTP (stdlib only)."""

    def __init__(self, url: str | None, *, timeout: float = 15.0) -> None:
        self.url = (url or "").strip()
        self.timeout = timeout

    def submit(self, document: bytes, *, reference: str) -> str:
        """Post one invoice, identified by our reference (so a resend is recognised); return the provider's lookup code.

        Raises ProviderUnavailable when no URL is configured, the provider cannot be
        reached, answers with an HTTP error, or gives no lookup code.
        """
        if not self.url:
            raise ProviderUnavailable(extra={"reason": "not configured"})
        request = urllib.request.Request(  # noqa: S310 - the operator's configured provider endpoint
            self.url,
            data=document,
            headers={"Content-Type": "application/xml; charset=utf-8", "X-Invoice-Reference": reference},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - as above
                answer = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ProviderUnavailable(extra={"reason": type(exc).__name__}) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProviderUnavailable(extra={"reason": "not JSON"}) from exc
        lookup = answer.get("lookup_code") if isinstance(answer, dict) else None
        if not isinstance(lookup, str) or not lookup:
            raise ProviderUnavailable(extra={"reason": "no lookup code"})
        return lookup


def einvoice_for_invoice(
    session: Session,
    invoice: Invoice,
    *,
    seller: Party,
    template: str,
    series: str,
    number: int,
    issued_on: date,
) -> bytes:
    """Write the e-invoice of a paid invoice, the patient as buyer.

    Raises InvoiceNotPaid when the invoice is not paid.
    """
    from his.patients import patient_summary

    if invoice.status != "paid":
        raise InvoiceNotPaid()
    patient = patient_summary(session, invoice.patient_id)
    resource = store.read(session, "Patient", invoice.patient_id).resource
    address = (resource.get("address") or [{}])[0].get("text", "")
    units = {
        charge.id: charge.unit
        for charge in session.scalars(select(Charge).where(Charge.encounter_id == invoice.encounter_id))
    }
    return einvoice_xml(
        template=template,
        series=series,
        number=number,
        issued_on=issued_on,
        seller=seller,
        buyer=Party(name=patient["full_name"], address=address, national_id=patient.get("national_id") or ""),
        lines=[
            EInvoiceLine(
                code=line.code,
                name=line.description,
                unit=units.get(line.charge_id, ""),
                quantity=line.quantity,
                unit_price=line.unit_price,
                amount=line.total,
            )
            for line in invoice.lines
        ],
        fund_share=invoice.fund,
    )


class InvoiceNotPaid(Conflict):
    code = "BILLING_INVOICE_NOT_PAID"
    message = N_("Only a paid invoice gets an e-invoice.")
