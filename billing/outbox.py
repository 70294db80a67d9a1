"""Hand paid invoices on: the e-invoice to the provider, the insured visit's claim to the BHXH gateway.

When an invoice is paid, :func:`queue_paid_invoice` puts it in both queues (once: one
row per invoice, by a unique constraint). The jobs in ``billing.jobs`` send what is
pending and can run twice without harm: a sent row is never sent again, a failure
counts an attempt and stays pending, a refused claim is set aside for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.charges import DEFAULT_ZONE
from billing.claims import (
    ClaimGateway,
    ClaimGatewayUnavailable,
    ClaimNotReady,
    ClaimRejected,
    claim_document,
    claim_for_invoice,
)
from billing.einvoice import EInvoiceProvider, Party, ProviderUnavailable, einvoice_for_invoice
from billing.invoices import Facility
from billing.models import ClaimSubmission, EInvoiceRecord, Invoice
from billing.xmlsign import sign_envelope
from his.db import utcnow


@dataclass(frozen=True)
class EInvoiceSettings:
    """What the e-invoices of this hospital say about the seller, and under which template and series."""

    seller: Party
    template: str = "2"
    series: str = "C26TBV"


def _add_once(session: Session, row: EInvoiceRecord | ClaimSubmission) -> None:
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        pass  # already queued by an earlier payment of the same invoice


def queue_paid_invoice(session: Session, invoice: Invoice) -> None:
    """Queue a paid invoice's e-invoice, and its claim when the visit was insured (idempotent)."""
    if invoice.status != "paid":
        return
    exists = session.scalar(select(EInvoiceRecord.id).where(EInvoiceRecord.invoice_id == invoice.id))
    if exists is None:
        _add_once(session, EInvoiceRecord(invoice_id=invoice.id, status="pending", attempts=0))
    if invoice.coverage_id is not None:
        queued = session.scalar(select(ClaimSubmission.id).where(ClaimSubmission.invoice_id == invoice.id))
        if queued is None:
            _add_once(session, ClaimSubmission(invoice_id=invoice.id, status="pending", attempts=0))


def _failed(row: EInvoiceRecord | ClaimSubmission, reason: Any) -> None:
    row.attempts += 1
    row.last_error = str(reason)[:200]


def send_einvoices(
    session: Session, provider: EInvoiceProvider, settings: EInvoiceSettings, *, zone: ZoneInfo = DEFAULT_ZONE
) -> int:
    """Send every pending e-invoice; return how many the provider accepted. Never commits."""
    sent = 0
    pending = session.scalars(
        select(EInvoiceRecord).where(EInvoiceRecord.status == "pending").order_by(EInvoiceRecord.id)
    )
    for row in list(pending):
        invoice = session.get(Invoice, row.invoice_id)
        if invoice is None or invoice.status != "paid":
            continue
        issued_on = (invoice.paid_at or utcnow()).astimezone(zone).date()
        document = einvoice_for_invoice(
            session,
            invoice,
            seller=settings.seller,
            template=settings.template,
            series=settings.series,
            number=row.id,
            issued_on=issued_on,
        )
        try:
            row.lookup_code = provider.submit(document, reference=invoice.reference or str(invoice.id))
        except ProviderUnavailable as exc:
            _failed(row, exc.extra.get("reason", exc.code))
            continue
        row.status = "sent"
        row.sent_at = utcnow()
        sent += 1
    session.flush()
    return sent


def submit_claims(
    session: Session,
    gateway: ClaimGateway,
    facility: Facility,
    *,
    signing: tuple[Any, Any] | None = None,
    created_on: date | None = None,
    zone: ZoneInfo = DEFAULT_ZONE,
) -> int:
    """Send every pending claim, signed when a key is given; return how many the gateway took. Never commits."""
    sent = 0
    pending = session.scalars(
        select(ClaimSubmission).where(ClaimSubmission.status == "pending").order_by(ClaimSubmission.id)
    )
    for row in list(pending):
        try:
            visit = claim_for_invoice(session, row.invoice_id, facility, zone=zone)
        except ClaimNotReady as exc:
            row.status = "rejected"
            row.last_error = exc.code
            continue
        document = claim_document(visit, created_on or utcnow().astimezone(zone).date(), zone)
        if signing is not None:
            document = sign_envelope(document, *signing)
        try:
            row.receipt = gateway.submit(document, link_code=visit.link_code)
        except ClaimRejected as exc:
            row.status = "rejected"
            _failed(row, exc.extra.get("status", exc.code))
            continue
        except ClaimGatewayUnavailable as exc:
            _failed(row, exc.extra.get("reason", exc.code))
            continue
        row.status = "sent"
        row.sent_at = utcnow()
        sent += 1
    session.flush()
    return sent
