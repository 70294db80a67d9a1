"""Define the billing context's tables: prices, charges, coverage, invoices, payments and bank notices."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from his.db import Base, utcnow

PRICE_KINDS: tuple[str, ...] = ("visit", "service", "drug", "supply", "bed", "other")
_THOUSANDTHS = Decimal("1000")


class Money(TypeDecorator[Decimal]):
    """Store an amount of đồng exactly, as a whole number of thousandths (prices have 3 decimals).

    SQLite has no exact decimal type, and money must never pass through a float.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        """Convert đồng to thousandths; raises ValueError for a value with more than 3 decimals."""
        if value is None:
            return None
        scaled = Decimal(value) * _THOUSANDTHS
        if scaled != scaled.to_integral_value():
            raise ValueError("a price has at most 3 decimals")
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(value) / _THOUSANDTHS).quantize(Decimal("0.001"))


class PriceEntry(Base):
    """The price of one item (visit, service, drug…) from ``valid_from`` until the next entry or ``valid_to``.

    ``insurance_price`` is the price the BHYT fund recognises, kept only where it differs.
    ``search_text`` is the code and name without diacritics, so that "sieu am" finds "Siêu âm".
    """

    __tablename__ = "billing_prices"
    __table_args__ = (UniqueConstraint("code", "valid_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(20))
    unit: Mapped[str] = mapped_column(String(50), default="")
    price: Mapped[Decimal] = mapped_column(Money())
    insurance_price: Mapped[Decimal | None] = mapped_column(Money(), nullable=True)
    xml_group: Mapped[str | None] = mapped_column(String(5), nullable=True)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    search_text: Mapped[str] = mapped_column(String(600), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Quantity(Money):
    """Store a quantity exactly, as a whole number of thousandths (XML 130 writes 3 decimals)."""

    cache_ok = True


CHARGE_STATUSES: tuple[str, ...] = ("billable", "flagged", "voided")
PAYMENT_CHANNELS: tuple[str, ...] = ("vietqr", "card", "cash")
REVIEW_REASONS: tuple[str, ...] = ("partial", "excess", "unmatched", "closed")


class Charge(Base):
    """One thing done for a patient that costs money, mirroring a FHIR ChargeItem.

    ``source`` names what caused it (``encounter.checked_in:<id>``, ``manual:<uuid>``) and
    is unique, so a repeated event never charges twice. A charge without a price on its
    day is ``flagged``: it is shown to the cashier and never billed as zero.
    """

    __tablename__ = "billing_charges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(200), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    encounter_id: Mapped[str] = mapped_column(String(64), index=True)
    charge_item_id: Mapped[str] = mapped_column(String(64))
    item_code: Mapped[str] = mapped_column(String(50))
    description: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(20))
    unit: Mapped[str] = mapped_column(String(50), default="")
    xml_group: Mapped[str | None] = mapped_column(String(5), nullable=True)
    quantity: Mapped[Decimal] = mapped_column(Quantity())
    unit_price: Mapped[Decimal | None] = mapped_column(Money(), nullable=True)
    insurance_unit_price: Mapped[Decimal | None] = mapped_column(Money(), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    service_day: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20))
    entered_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)
    void_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    voided_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CoverageRecord(Base):
    """A patient's BHYT card as entered at the desk, mirroring a FHIR Coverage."""

    __tablename__ = "billing_coverages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    coverage_resource_id: Mapped[str] = mapped_column(String(64))
    card_code: Mapped[str] = mapped_column(String(15))
    valid_from: Mapped[date | None] = mapped_column(Date, nullable=True)
    valid_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    registered_facility: Mapped[str | None] = mapped_column(String(5), nullable=True)
    five_years_from: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    gateway_code: Mapped[str | None] = mapped_column(String(3), nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Invoice(Base):
    """The bill of one encounter: its totals split between the fund and the patient, and what was paid.

    ``reference`` (``VP`` + year + six digits) is what the patient's bank transfer carries
    in its note, and what a bank notification is matched by.
    """

    __tablename__ = "billing_invoices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(20), unique=True, nullable=True)
    encounter_id: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    invoice_resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    visit_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default="open")
    coverage_id: Mapped[int | None] = mapped_column(ForeignKey("billing_coverages.id"), nullable=True)
    benefit_level: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reasons: Mapped[str] = mapped_column(String(100), default="")
    total: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    fund: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    copay: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    patient_full: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    amount_due: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    amount_paid: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    lines: Mapped[list[InvoiceLineRecord]] = relationship(
        back_populates="invoice", order_by="InvoiceLineRecord.position", cascade="all, delete-orphan"
    )

    @property
    def balance(self) -> Decimal:
        """Return what the patient still owes (negative when they paid too much)."""
        return self.amount_due - self.amount_paid


class InvoiceLineRecord(Base):
    """One line of an invoice as split: total, the fund's share, co-payment and full payment."""

    __tablename__ = "billing_invoice_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id", ondelete="CASCADE"), index=True)
    charge_id: Mapped[int] = mapped_column(ForeignKey("billing_charges.id"))
    position: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(50))
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[Decimal] = mapped_column(Quantity())
    unit_price: Mapped[Decimal] = mapped_column(Money())
    total: Mapped[Decimal] = mapped_column(Money())
    covered: Mapped[Decimal] = mapped_column(Money())
    fund: Mapped[Decimal] = mapped_column(Money())
    copay: Mapped[Decimal] = mapped_column(Money())
    patient_full: Mapped[Decimal] = mapped_column(Money())

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class BankNotification(Base):
    """A bank's notice of an incoming transfer, kept once per bank transaction id.

    ``status`` is ``credited`` (matched and paid), ``review`` (held for a cashier because
    it is partial, excess, unmatched or for a closed invoice) or ``resolved`` (a cashier
    decided). Nothing here is ever deleted: a transfer is never lost.
    """

    __tablename__ = "billing_bank_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(100), unique=True)
    amount: Mapped[Decimal] = mapped_column(Money())
    description: Mapped[str] = mapped_column(String(500), default="")
    account: Mapped[str | None] = mapped_column(String(30), nullable=True)
    transacted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    review_reason: Mapped[str | None] = mapped_column(String(20), nullable=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("billing_invoices.id"), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolution: Mapped[str | None] = mapped_column(String(20), nullable=True)
    resolution_note: Mapped[str | None] = mapped_column(String(500), nullable=True)


class Payment(Base):
    """Money received for an invoice: by VietQR transfer, card terminal or cash."""

    __tablename__ = "billing_payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    amount: Mapped[Decimal] = mapped_column(Money())
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    recorded_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    notification_id: Mapped[int | None] = mapped_column(
        ForeignKey("billing_bank_notifications.id"), unique=True, nullable=True
    )
    terminal_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Refund(Base):
    """Money given back on an invoice, with the cashier's reason."""

    __tablename__ = "billing_refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    amount: Mapped[Decimal] = mapped_column(Money())
    reason: Mapped[str] = mapped_column(String(500))
    recorded_by: Mapped[str] = mapped_column(String(80))
    refunded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EInvoiceRecord(Base):
    """The e-invoice of a paid invoice: its number (``SHDon`` = this row's id) and whether the provider has it."""

    __tablename__ = "billing_einvoices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id"), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    lookup_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ClaimSubmission(Base):
    """A paid insured visit's claim on its way to the social-insurance gateway."""

    __tablename__ = "billing_claim_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id"), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    receipt: Mapped[str | None] = mapped_column(String(100), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Receipt(Base):
    """The receipt (biên lai thu tiền) of a paid invoice, numbered once and for good.

    ``number`` is ``BL`` + the year it was paid (in the hospital's time zone) + that
    year's sequence (``BL2026-000123``); a refund or a later payment never renumbers it.
    """

    __tablename__ = "billing_receipts"
    __table_args__ = (UniqueConstraint("year", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoices.id"), unique=True)
    year: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(Integer)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReceiptCounter(Base):
    """The last receipt number given in a year, moved on by one atomic update per receipt."""

    __tablename__ = "billing_receipt_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer)
