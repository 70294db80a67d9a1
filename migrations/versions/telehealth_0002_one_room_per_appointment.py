"""telehealth: one room per video appointment (unique appointment id)

Revision ID: telehealth_0002
Revises: telehealth_0001
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

from alembic import op

revision = "telehealth_0002"
down_revision = "telehealth_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telehealth_rooms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telehealth_rooms_appointment_id"))
        batch_op.create_index(
            batch_op.f("ix_telehealth_rooms_appointment_id"), ["appointment_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("telehealth_rooms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telehealth_rooms_appointment_id"))
        batch_op.create_index(
            batch_op.f("ix_telehealth_rooms_appointment_id"), ["appointment_id"], unique=False
        )
