"""billing: receipts of paid invoices, numbered per year; paid invoices get theirs now

Revision ID: billing_0005
Revises: billing_0004
Create Date: 2026-11-23 15:10:00
"""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "billing_0005"
down_revision = "billing_0004"
branch_labels = None
depends_on = None

# Receipts of invoices paid before this migration are numbered by the year they were paid
# in the hospital's time zone, in the order they were paid.
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def upgrade() -> None:
    receipts = op.create_table(
        "billing_receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_receipts_invoice_id_billing_invoices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_receipts")),
        sa.UniqueConstraint("invoice_id", name=op.f("uq_billing_receipts_invoice_id")),
        sa.UniqueConstraint("number", name=op.f("uq_billing_receipts_number")),
        sa.UniqueConstraint("year", "sequence", name=op.f("uq_billing_receipts_year_sequence")),
    )
    counters = op.create_table(
        "billing_receipt_counters",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_billing_receipt_counters")),
    )
    invoices = sa.table(
        "billing_invoices",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("paid_at", sa.DateTime(timezone=True)),
    )
    paid = op.get_bind().execute(
        sa.select(invoices.c.id, invoices.c.paid_at)
        .where(invoices.c.status == "paid", invoices.c.paid_at.is_not(None))
        .order_by(invoices.c.paid_at, invoices.c.id)
    )
    last: dict[int, int] = {}
    rows = []
    for invoice_id, paid_at in paid:
        moment = paid_at if paid_at.tzinfo else paid_at.replace(tzinfo=UTC)
        year = moment.astimezone(ZONE).year
        last[year] = last.get(year, 0) + 1
        rows.append(
            {
                "invoice_id": invoice_id,
                "year": year,
                "sequence": last[year],
                "number": f"BL{year}-{last[year]:06d}",
                "issued_at": moment,
            }
        )
    if rows:
        op.bulk_insert(receipts, rows)
        op.bulk_insert(counters, [{"year": year, "last": count} for year, count in last.items()])


def downgrade() -> None:
    op.drop_table("billing_receipt_counters")
    op.drop_table("billing_receipts")
