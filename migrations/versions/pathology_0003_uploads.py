"""pathology: slides uploaded in resumable chunks

Revision ID: pathology_0003
Revises: pathology_0002
Create Date: 2026-11-23 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "pathology_0003"
down_revision = "pathology_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pathology_uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("folder", sa.String(length=64), nullable=False),
        sa.Column("case_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_pathology_uploads_site_id_sites")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_pathology_uploads_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathology_uploads")),
    )
    with op.batch_alter_table("pathology_uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pathology_uploads_site_id"), ["site_id"])
        batch_op.create_index(batch_op.f("ix_pathology_uploads_updated_at"), ["updated_at"])


def downgrade() -> None:
    op.drop_table("pathology_uploads")
