"""billing: the dated price list

Revision ID: billing_0001
Revises:
Create Date: 2026-11-23 11:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0001"
down_revision = None
branch_labels = ("billing",)
depends_on = "his_0001"


def upgrade() -> None:
    op.create_table(
        "billing_prices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("unit", sa.String(length=50), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("insurance_price", sa.BigInteger(), nullable=True),
        sa.Column("xml_group", sa.String(length=5), nullable=True),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("search_text", sa.String(length=600), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_prices")),
        sa.UniqueConstraint("code", "valid_from", name=op.f("uq_billing_prices_code_valid_from")),
    )


def downgrade() -> None:
    op.drop_table("billing_prices")
