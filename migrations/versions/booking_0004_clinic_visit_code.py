"""booking: each clinic's visit fee (a price-list item code), charged at check-in

Revision ID: booking_0004
Revises: booking_0003
Create Date: 2026-11-23 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "booking_0004"
down_revision = "booking_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("booking_clinics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("visit_code", sa.String(length=50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("booking_clinics", schema=None) as batch_op:
        batch_op.drop_column("visit_code")
