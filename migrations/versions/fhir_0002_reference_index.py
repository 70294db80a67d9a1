"""fhir: look references up by target id first (searches by a bare id use it too)

Revision ID: fhir_0002
Revises: fhir_0001
Create Date: 2026-11-23 12:15:00
"""

from __future__ import annotations

from alembic import op

revision = "fhir_0002"
down_revision = "fhir_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_fhir_idx_reference_target", table_name="fhir_idx_reference")
    op.create_index(
        "ix_fhir_idx_reference_target_id",
        "fhir_idx_reference",
        ["target_id", "target_type", "param", "res_type"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_fhir_idx_reference_target_id", table_name="fhir_idx_reference")
    op.create_index(
        "ix_fhir_idx_reference_target",
        "fhir_idx_reference",
        ["target_type", "target_id", "param", "res_type"],
        unique=False,
    )
