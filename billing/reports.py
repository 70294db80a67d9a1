"""Sum up a day at the cash desk: revenue by channel, fund versus patient, what is outstanding."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import PAYMENT_CHANNELS, Invoice, Payment, Refund
from billing.payments import review_count

ZERO = Decimal(0)


@dataclass(frozen=True)
class DailyReport:
    """The figures of one day in the hospital's time zone."""

    day: date
    revenue: dict[str, Decimal]
    refunds: Decimal
    fund_share: Decimal
    patient_share: Decimal
    visits: int
    outstanding_count: int
    outstanding_amount: Decimal
    review_queue: int

    @property
    def net_revenue(self) -> Decimal:
        return sum(self.revenue.values(), ZERO) - self.refunds

    def bar(self, channel: str) -> int:
        """Return a channel's share of the day's takings as a whole percentage (for the chart)."""
        total = sum(self.revenue.values(), ZERO)
        return int(self.revenue[channel] * 100 / total) if total else 0


def _bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    # In UTC, as times are stored: SQLite compares the stored UTC text, not instants.
    start = datetime.combine(day, time(0), tzinfo=zone)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def daily_report(session: Session, day: date, zone: ZoneInfo) -> DailyReport:
    """Return the day's takings by channel, refunds, the split of its visits and what is still owed."""
    start, end = _bounds(day, zone)
    revenue = dict.fromkeys(PAYMENT_CHANNELS, ZERO)
    for payment in session.scalars(
        select(Payment).where(Payment.received_at >= start, Payment.received_at < end)
    ):
        revenue[payment.channel] = revenue.get(payment.channel, ZERO) + payment.amount
    refunds = sum(
        session.scalars(select(Refund.amount).where(Refund.refunded_at >= start, Refund.refunded_at < end)),
        ZERO,
    )
    visits = list(session.scalars(select(Invoice).where(Invoice.visit_date == day)))
    open_invoices = [
        invoice
        for invoice in session.scalars(select(Invoice).where(Invoice.status == "open"))
        if invoice.balance > 0
    ]
    return DailyReport(
        day=day,
        revenue=revenue,
        refunds=refunds,
        fund_share=sum((invoice.fund for invoice in visits), ZERO),
        patient_share=sum((invoice.copay + invoice.patient_full for invoice in visits), ZERO),
        visits=len(visits),
        outstanding_count=len(open_invoices),
        outstanding_amount=sum((invoice.balance for invoice in open_invoices), ZERO),
        review_queue=review_count(session),
    )


def report_csv(report: DailyReport) -> str:
    """Write the day's figures as a two-column CSV (with a BOM for spreadsheets)."""
    buffer = io.StringIO(newline="")
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["figure", "value"])
    writer.writerow(["day", report.day.isoformat()])
    for channel, amount in report.revenue.items():
        writer.writerow([f"revenue_{channel}", format(amount.quantize(Decimal(1)), "f")])
    rows = [
        ("refunds", report.refunds),
        ("net_revenue", report.net_revenue),
        ("fund_share", report.fund_share),
        ("patient_share", report.patient_share),
        ("outstanding_amount", report.outstanding_amount),
    ]
    for name, amount in rows:
        writer.writerow([name, format(amount.quantize(Decimal("0.01")).normalize(), "f")])
    writer.writerow(["visits", report.visits])
    writer.writerow(["outstanding_invoices", report.outstanding_count])
    writer.writerow(["review_queue", report.review_queue])
    return buffer.getvalue()
