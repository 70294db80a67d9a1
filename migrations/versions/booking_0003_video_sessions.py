"""booking: video sessions (weekly templates and sessions may be seen by video call), bookings by Appointment

Revision ID: booking_0003
Revises: booking_0002
Create Date: 2026-11-23 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "booking_0003"
down_revision = "booking_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("booking_weekly_templates", "booking_sessions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("video", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Telehealth finds a video visit by its Appointment id.
    op.create_index(
        op.f("ix_booking_bookings_appointment_id"), "booking_bookings", ["appointment_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_booking_bookings_appointment_id"), table_name="booking_bookings")
    for table in ("booking_sessions", "booking_weekly_templates"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("video")
