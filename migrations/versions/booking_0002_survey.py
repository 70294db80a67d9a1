"""booking: satisfaction survey answers on bookings

Revision ID: booking_0002
Revises: booking_0001
Create Date: 2026-11-23 12:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "booking_0002"
down_revision = "booking_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("booking_bookings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("satisfaction", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("survey_response_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("booking_bookings", schema=None) as batch_op:
        batch_op.drop_column("survey_response_id")
        batch_op.drop_column("satisfaction")
