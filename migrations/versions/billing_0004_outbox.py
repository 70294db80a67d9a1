"""billing: e-invoices and claim submissions waiting to be sent

Revision ID: billing_0004
Revises: billing_0003
Create Date: 2026-11-23 12:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0004"
down_revision = "billing_0003"
branch_labels = None
depends_on = None


def _outbox(name: str, extra: sa.Column[str]) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        extra,
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["billing_invoices.id"], name=op.f(f"fk_{name}_invoice_id_billing_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("invoice_id", name=op.f(f"uq_{name}_invoice_id")),
    )


def upgrade() -> None:
    _outbox("billing_einvoices", sa.Column("lookup_code", sa.String(length=100), nullable=True))
    _outbox("billing_claim_submissions", sa.Column("receipt", sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_table("billing_claim_submissions")
    op.drop_table("billing_einvoices")
