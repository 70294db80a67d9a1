"""pathology: consult cases, their reports, slide annotations, pyramid progress

Revision ID: pathology_0002
Revises: pathology_0001
Create Date: 2026-11-23 12:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "pathology_0002"
down_revision = "pathology_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pathology_slides", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pyramid_progress", sa.Float(), nullable=True))
    op.create_table(
        "pathology_cases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("requesting_site_id", sa.Integer(), nullable=False),
        sa.Column("receiving_site_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("clinical_question", sa.Text(), nullable=False),
        sa.Column("specimen_type", sa.String(length=200), nullable=False),
        sa.Column("body_site", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("assigned_to", sa.Integer(), nullable=True),
        sa.Column("service_request_id", sa.String(length=64), nullable=True),
        sa.Column("specimen_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["requesting_site_id"], ["sites.id"], name=op.f("fk_pathology_cases_requesting_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["receiving_site_id"], ["sites.id"], name=op.f("fk_pathology_cases_receiving_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["users.id"], name=op.f("fk_pathology_cases_requested_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["assigned_to"], ["users.id"], name=op.f("fk_pathology_cases_assigned_to_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathology_cases")),
    )
    with op.batch_alter_table("pathology_cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pathology_cases_requesting_site_id"), ["requesting_site_id"])
        batch_op.create_index(batch_op.f("ix_pathology_cases_receiving_site_id"), ["receiving_site_id"])
        batch_op.create_index(batch_op.f("ix_pathology_cases_patient_id"), ["patient_id"])
        batch_op.create_index(batch_op.f("ix_pathology_cases_status"), ["status"])

    op.create_table(
        "pathology_reports",
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("macroscopic", sa.Text(), nullable=False),
        sa.Column("microscopic", sa.Text(), nullable=False),
        sa.Column("conclusion", sa.Text(), nullable=False),
        sa.Column("diagnosis_code", sa.String(length=20), nullable=True),
        sa.Column("diagnosis_display", sa.String(length=300), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("diagnostic_report_id", sa.String(length=64), nullable=True),
        sa.Column("provenance_id", sa.String(length=64), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["pathology_cases.id"], name=op.f("fk_pathology_reports_case_id_pathology_cases")
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_pathology_reports_author_id_users")
        ),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_pathology_reports")),
    )

    op.create_table(
        "pathology_annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.String(length=32), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("author_name", sa.String(length=200), nullable=False),
        sa.Column("feature", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["slide_id"],
            ["pathology_slides.id"],
            name=op.f("fk_pathology_annotations_slide_id_pathology_slides"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_pathology_annotations_author_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathology_annotations")),
    )
    with op.batch_alter_table("pathology_annotations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pathology_annotations_slide_id"), ["slide_id"])


def downgrade() -> None:
    op.drop_table("pathology_annotations")
    op.drop_table("pathology_reports")
    op.drop_table("pathology_cases")
    with op.batch_alter_table("pathology_slides", schema=None) as batch_op:
        batch_op.drop_column("pyramid_progress")
