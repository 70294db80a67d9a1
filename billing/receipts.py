"""Number the receipt of a paid invoice and print it as the Vietnamese "BIÊN LAI THU TIỀN" (PDF).

A receipt is numbered once, when its invoice is first paid in full, by the year of
that payment in the hospital's time zone: ``BL2026-000123``. The year's counter moves
by one atomic ``UPDATE … RETURNING`` (a row lock on PostgreSQL, the write lock the
payment's transaction already holds on SQLite), never ``max()+1``, so two cashiers
never get one number; a refund or a second download never renumbers it.

The sheet is a document of Vietnamese practice, so its wording is Vietnamese whatever
the user's language. :func:`sheet_of` gathers what it shows (a plain value, handy for
tests); :func:`render_pdf` draws it with ``his.pdf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.charges import DEFAULT_ZONE
from billing.models import (
    BankNotification,
    Charge,
    CoverageRecord,
    Invoice,
    Payment,
    Receipt,
    ReceiptCounter,
    Refund,
)
from billing.words import amount_in_words
from his.db import as_utc
from his.errors import N_, Conflict
from his.i18n import format_vnd
from his.models import User
from his.patients import patient_summary
from his.pdf import new_document

PREFIX = "BL"
CHANNELS = {
    "vietqr": "Chuyển khoản VietQR",
    "card": "Thẻ",
    "cash": "Tiền mặt",
    "transfer": "Chuyển khoản",
}
ZERO = Decimal(0)


class ReceiptUnavailable(Conflict):
    """The invoice is not paid in full, so it has no receipt."""

    code = "BILLING_RECEIPT_NOT_PAID"
    message = N_("This invoice is not paid in full yet, so it has no receipt.")


def receipt_of(session: Session, invoice_id: int) -> Receipt | None:
    """Return the invoice's receipt, if it has one."""
    return session.scalars(select(Receipt).where(Receipt.invoice_id == invoice_id)).first()


def _next_sequence(session: Session, year: int) -> int:
    """Move the year's counter on by one and return its new value."""
    bump = (
        update(ReceiptCounter)
        .where(ReceiptCounter.year == year)
        .values(last=ReceiptCounter.last + 1)
        .returning(ReceiptCounter.last)
        .execution_options(synchronize_session=False)
    )
    value = session.scalar(bump)
    if value is not None:
        return int(value)
    try:
        with session.begin_nested():
            session.add(ReceiptCounter(year=year, last=1))
            session.flush()
    except IntegrityError:
        # Another receipt opened the year at the same moment: count on from theirs.
        return int(session.scalar(bump) or 0)
    return 1


def issue_receipt(session: Session, invoice: Invoice, *, zone: ZoneInfo = DEFAULT_ZONE) -> Receipt:
    """Return the paid invoice's receipt, numbering it the first time. Never commits.

    Raises ReceiptUnavailable when the invoice is not paid in full.
    """
    existing = receipt_of(session, invoice.id)
    if existing is not None:
        return existing
    if invoice.status != "paid" or invoice.paid_at is None:
        raise ReceiptUnavailable()
    year = as_utc(invoice.paid_at).astimezone(zone).year
    try:
        with session.begin_nested():
            sequence = _next_sequence(session, year)
            receipt = Receipt(
                invoice_id=invoice.id, year=year, sequence=sequence, number=f"{PREFIX}{year}-{sequence:06d}"
            )
            session.add(receipt)
            session.flush()
    except IntegrityError:
        # The same invoice's receipt was numbered at the same moment elsewhere: that one stands.
        winner = receipt_of(session, invoice.id)
        if winner is None:
            raise
        return winner
    return receipt


@dataclass(frozen=True)
class Seller:
    """The hospital as the receipt names it."""

    name: str
    tax_code: str = ""
    address: str = ""
    facility_code: str = ""


@dataclass(frozen=True)
class ReceiptLine:
    """One billed item: what, how many, at what price, and who pays what of it."""

    description: str
    unit: str
    quantity: Decimal
    unit_price: Decimal
    total: Decimal
    fund: Decimal
    copay: Decimal
    patient_pays: Decimal


@dataclass(frozen=True)
class MoneyMovement:
    """Money received (a payment) or given back (a refund)."""

    at: datetime
    channel: str
    amount: Decimal
    reference: str
    cashier: str
    reason: str = ""


@dataclass(frozen=True)
class ReceiptSheet:
    """Everything the printed receipt shows."""

    number: str
    seller: Seller
    paid_at: datetime
    invoice_reference: str
    visit_date: date
    patient_name: str
    card_code: str
    benefit_level: int | None
    lines: list[ReceiptLine]
    total: Decimal
    fund: Decimal
    patient_pays: Decimal
    payments: list[MoneyMovement]
    refunds: list[MoneyMovement]
    collected: Decimal

    @property
    def received(self) -> Decimal:
        return sum((payment.amount for payment in self.payments), ZERO)

    @property
    def refunded(self) -> Decimal:
        return sum((refund.amount for refund in self.refunds), ZERO)

    @property
    def in_words(self) -> str:
        return amount_in_words(self.collected)

    @property
    def cashiers(self) -> list[str]:
        names: list[str] = []
        for movement in self.payments:
            if movement.cashier and movement.cashier not in names:
                names.append(movement.cashier)
        return names


def _full_names(session: Session, usernames: set[str]) -> dict[str, str]:
    if not usernames:
        return {}
    rows = session.execute(select(User.username, User.full_name).where(User.username.in_(usernames)))
    return {username: full_name or username for username, full_name in rows}


def sheet_of(
    session: Session, invoice: Invoice, receipt: Receipt, seller: Seller, *, zone: ZoneInfo = DEFAULT_ZONE
) -> ReceiptSheet:
    """Gather what the invoice's receipt shows, times in ``zone``.

    Raises NotFound when the patient is no longer in the store.
    """
    patient = patient_summary(session, invoice.patient_id)
    coverage = session.get(CoverageRecord, invoice.coverage_id) if invoice.coverage_id else None
    units = {
        charge.id: charge.unit
        for charge in session.scalars(select(Charge).where(Charge.encounter_id == invoice.encounter_id))
    }
    payments = list(
        session.scalars(
            select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.received_at, Payment.id)
        )
    )
    refunds = list(
        session.scalars(
            select(Refund).where(Refund.invoice_id == invoice.id).order_by(Refund.refunded_at, Refund.id)
        )
    )
    notice_ids = {payment.notification_id for payment in payments if payment.notification_id}
    transactions: dict[int, str] = {}
    if notice_ids:
        rows = session.execute(
            select(BankNotification.id, BankNotification.transaction_id).where(
                BankNotification.id.in_(notice_ids)
            )
        )
        transactions = {notice_id: transaction_id for notice_id, transaction_id in rows}
    names = _full_names(
        session,
        {payment.recorded_by for payment in payments if payment.recorded_by}
        | {refund.recorded_by for refund in refunds},
    )
    return ReceiptSheet(
        number=receipt.number,
        seller=seller,
        paid_at=as_utc(invoice.paid_at or receipt.issued_at).astimezone(zone),
        invoice_reference=invoice.reference or "",
        visit_date=invoice.visit_date,
        patient_name=str(patient.get("full_name") or ""),
        card_code=coverage.card_code if coverage is not None else "",
        benefit_level=invoice.benefit_level if coverage is not None else None,
        lines=[
            ReceiptLine(
                description=line.description,
                unit=units.get(line.charge_id, ""),
                quantity=line.quantity,
                unit_price=line.unit_price,
                total=line.total,
                fund=line.fund,
                copay=line.copay,
                patient_pays=line.copay + line.patient_full,
            )
            for line in invoice.lines
        ],
        total=invoice.total,
        fund=invoice.fund,
        patient_pays=invoice.amount_due,
        payments=[
            MoneyMovement(
                at=as_utc(payment.received_at).astimezone(zone),
                channel=payment.channel,
                amount=payment.amount,
                reference=(
                    transactions.get(payment.notification_id, "")
                    if payment.notification_id
                    else payment.terminal_reference or ""
                ),
                cashier=names.get(payment.recorded_by, payment.recorded_by) if payment.recorded_by else "",
            )
            for payment in payments
        ],
        refunds=[
            MoneyMovement(
                at=as_utc(refund.refunded_at).astimezone(zone),
                channel=refund.channel,
                amount=refund.amount,
                reference="",
                cashier=names.get(refund.recorded_by, refund.recorded_by),
                reason=refund.reason,
            )
            for refund in refunds
        ],
        collected=invoice.amount_paid,
    )


def format_quantity(value: Decimal) -> str:
    """Write a quantity without trailing zeros or an exponent, with a decimal comma: ``10``, ``1,5``."""
    text = format(value.normalize(), "f")
    return text.replace(".", ",")


def _price(value: Decimal) -> str:
    """Write a unit price with dot thousands, keeping its decimals (a tablet may cost 1.234,5)."""
    whole = value.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    if value == whole:
        return format_vnd(value).replace("\u00a0₫", "")
    integer, _, fraction = format(value.normalize(), "f").partition(".")
    return f"{int(integer):,}".replace(",", ".") + "," + fraction


def _moment(value: datetime) -> str:
    return value.strftime("%H:%M %d/%m/%Y")


def render_pdf(app: Flask, sheet: ReceiptSheet) -> bytes:
    """Draw the receipt on an A4 page (more pages for a long bill) and return the PDF.

    Raises ConfigurationError when the PDF fonts are not installed.
    """
    pdf = new_document(app, page_format="A4", title=f"Biên lai thu tiền {sheet.number}")
    pdf.set_margins(12, 12, 12)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    pdf.set_font(style="B", size=11)
    pdf.multi_cell(
        width, 5.5, (sheet.seller.name or "Cơ sở khám bệnh, chữa bệnh").upper(), new_x="LMARGIN", new_y="NEXT"
    )
    pdf.set_font(size=9)
    for label, value in (
        ("Mã số thuế", sheet.seller.tax_code),
        ("Mã cơ sở KCB", sheet.seller.facility_code),
        ("Địa chỉ", sheet.seller.address),
    ):
        if value:
            pdf.multi_cell(width, 4.5, f"{label}: {value}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(style="B", size=16)
    pdf.cell(width, 9, "BIÊN LAI THU TIỀN", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(size=10)
    pdf.cell(width, 5.5, f"Số: {sheet.number}", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(width, 5.5, f"Thu lúc {_moment(sheet.paid_at)}", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)

    def fact(label: str, value: str) -> None:
        pdf.set_font(size=10)
        pdf.write(5.5, f"{label}: ")
        pdf.set_font(style="B", size=10)
        pdf.write(5.5, value)
        pdf.ln(6)

    fact("Họ tên người bệnh", sheet.patient_name)
    if sheet.card_code:
        level = f" (mức hưởng {sheet.benefit_level})" if sheet.benefit_level else ""
        fact("Số thẻ BHYT", sheet.card_code + level)
    else:
        fact("Số thẻ BHYT", "không có")
    fact("Hóa đơn viện phí", f"{sheet.invoice_reference}, khám ngày {sheet.visit_date.strftime('%d/%m/%Y')}")
    pdf.ln(2)

    pdf.set_font(size=8)
    headings = (
        "STT",
        "Nội dung",
        "ĐVT",
        "Số lượng",
        "Đơn giá",
        "Thành tiền",
        "Quỹ BHYT trả",
        "Người bệnh cùng chi trả",
        "Người bệnh trả",
    )
    widths = (8, 50, 12, 14, 20, 22, 20, 20, 20)
    numeric = {"text_align": ("CENTER", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT")}
    with pdf.table(col_widths=widths, width=width, line_height=4.2, **numeric) as table:
        header = table.row()
        for heading in headings:
            header.cell(heading, align="CENTER")
        for index, line in enumerate(sheet.lines, start=1):
            row = table.row()
            for text in (
                str(index),
                line.description,
                line.unit,
                format_quantity(line.quantity),
                _price(line.unit_price),
                _price(line.total),
                _price(line.fund),
                _price(line.copay),
                _price(line.patient_pays),
            ):
                row.cell(text)
    pdf.ln(3)

    def total(label: str, amount: Decimal, *, bold: bool = False) -> None:
        pdf.set_font(style="B" if bold else "", size=10)
        pdf.cell(width - 45, 5.5, label, align="R")
        pdf.cell(45, 5.5, format_vnd(amount).replace("\u00a0", " "), align="R", new_x="LMARGIN", new_y="NEXT")

    total("Tổng chi phí:", sheet.total)
    total("Quỹ BHYT chi trả:", sheet.fund)
    total("Người bệnh phải trả:", sheet.patient_pays, bold=True)
    total("Đã thu:", sheet.received)
    if sheet.refunds:
        total("Đã hoàn trả:", sheet.refunded)
        total("Thực thu:", sheet.collected, bold=True)
    pdf.ln(2)
    pdf.set_font(style="I", size=10)
    pdf.multi_cell(width, 5.5, f"Bằng chữ: {sheet.in_words}.", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)

    pdf.set_font(style="B", size=10)
    pdf.cell(width, 5.5, "Thanh toán", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(size=9.5)
    for payment in sheet.payments:
        details = [
            _moment(payment.at),
            CHANNELS.get(payment.channel, payment.channel),
            format_vnd(payment.amount),
        ]
        if payment.reference:
            label = "mã giao dịch ngân hàng" if payment.channel == "vietqr" else "mã giao dịch thẻ"
            details.append(f"{label}: {payment.reference}")
        if payment.cashier:
            details.append(f"thu ngân: {payment.cashier}")
        pdf.multi_cell(
            width, 5, "• " + " · ".join(details).replace("\u00a0", " "), new_x="LMARGIN", new_y="NEXT"
        )
    if sheet.refunds:
        pdf.ln(1)
        pdf.set_font(style="B", size=10)
        pdf.cell(width, 5.5, "Hoàn trả", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(size=9.5)
        for refund in sheet.refunds:
            details = [
                _moment(refund.at),
                CHANNELS.get(refund.channel, refund.channel),
                "-" + format_vnd(refund.amount),
                f"lý do: {refund.reason}",
                f"thu ngân: {refund.cashier}",
            ]
            pdf.multi_cell(
                width, 5, "• " + " · ".join(details).replace("\u00a0", " "), new_x="LMARGIN", new_y="NEXT"
            )

    pdf.ln(8)
    half = width / 2
    pdf.set_font(style="B", size=10)
    pdf.cell(half, 5.5, "Người nộp tiền", align="C")
    pdf.cell(half, 5.5, "Người thu tiền", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(style="I", size=8.5)
    pdf.cell(half, 4.5, "(Ký, ghi rõ họ tên)", align="C")
    collector = ", ".join(sheet.cashiers) if sheet.cashiers else "Thu tự động qua VietQR"
    pdf.cell(half, 4.5, "(Ký, ghi rõ họ tên)", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(14)
    pdf.set_font(size=10)
    pdf.cell(half, 5.5, sheet.patient_name, align="C")
    pdf.cell(half, 5.5, collector, align="C", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
