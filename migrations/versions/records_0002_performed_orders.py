"""records: which orders were performed (one Procedure per ServiceRequest)

Revision ID: records_0002
Revises: records_0001
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "records_0002"
down_revision = "records_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records_performed_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_request_id", sa.String(length=64), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("performer_id", sa.Integer(), nullable=False),
        sa.Column("performed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["performer_id"], ["users.id"], name=op.f("fk_records_performed_orders_performer_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_performed_orders")),
        sa.UniqueConstraint(
            "service_request_id", name=op.f("uq_records_performed_orders_service_request_id")
        ),
    )
    with op.batch_alter_table("records_performed_orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_records_performed_orders_encounter_id"), ["encounter_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("records_performed_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_performed_orders_encounter_id"))
    op.drop_table("records_performed_orders")
