"""billing: refunds with the cashier's reason

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-11-23 12:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0003"
down_revision = "billing_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("recorded_by", sa.String(length=80), nullable=False),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_refunds_invoice_id_billing_invoices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_refunds")),
    )
    op.create_index(op.f("ix_billing_refunds_invoice_id"), "billing_refunds", ["invoice_id"])


def downgrade() -> None:
    op.drop_table("billing_refunds")
