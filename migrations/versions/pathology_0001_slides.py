"""pathology: the slide store's table

Revision ID: pathology_0001
Revises:
Create Date: 2026-11-23 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "pathology_0001"
down_revision = None
branch_labels = ("pathology",)
depends_on = "his_0001"


def upgrade() -> None:
    op.create_table(
        "pathology_slides",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(length=64), nullable=True),
        sa.Column("uploaded_by", sa.Integer(), nullable=True),
        sa.Column("original_filename", sa.String(length=255), nullable=False),
        sa.Column("stored_path", sa.String(length=500), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(length=40), nullable=False),
        sa.Column("vendor", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("level_count", sa.Integer(), nullable=False),
        sa.Column("mpp_x", sa.Float(), nullable=True),
        sa.Column("mpp_y", sa.Float(), nullable=True),
        sa.Column("objective_power", sa.Float(), nullable=True),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imaging_study_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_pathology_slides_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["users.id"], name=op.f("fk_pathology_slides_uploaded_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathology_slides")),
        sa.UniqueConstraint("site_id", "sha256", name=op.f("uq_pathology_slides_site_id_sha256")),
    )
    with op.batch_alter_table("pathology_slides", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pathology_slides_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pathology_slides_site_id"), ["site_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pathology_slides", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pathology_slides_site_id"))
        batch_op.drop_index(batch_op.f("ix_pathology_slides_case_id"))
    op.drop_table("pathology_slides")
