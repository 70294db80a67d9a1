"""fhir: the resource store (current versions, history, search indexes, compartments)

Revision ID: fhir_0001
Revises:
Create Date: 2026-11-23 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fhir_0001"
down_revision = None
branch_labels = ("fhir",)
depends_on = "his_0001"

TABLES = (
    "fhir_compartment",
    "fhir_idx_date",
    "fhir_idx_number",
    "fhir_idx_reference",
    "fhir_idx_string",
    "fhir_idx_token",
    "fhir_idx_uri",
    "fhir_resource",
    "fhir_resource_history",
)


def upgrade() -> None:
    op.create_table(
        "fhir_compartment",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "res_type", "res_id", name=op.f("pk_fhir_compartment")),
    )
    op.create_index("ix_fhir_compartment_resource", "fhir_compartment", ["res_type", "res_id"], unique=False)
    op.create_table(
        "fhir_idx_date",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("start", sa.DateTime(), nullable=False),
        sa.Column("end", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_date")),
    )
    op.create_index(
        "ix_fhir_idx_date_resource", "fhir_idx_date", ["res_type", "res_id", "param"], unique=False
    )
    op.create_index(
        "ix_fhir_idx_date_search", "fhir_idx_date", ["res_type", "param", "start", "end"], unique=False
    )
    op.create_table(
        "fhir_idx_number",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_number")),
    )
    op.create_index(
        "ix_fhir_idx_number_resource", "fhir_idx_number", ["res_type", "res_id", "param"], unique=False
    )
    op.create_index(
        "ix_fhir_idx_number_search", "fhir_idx_number", ["res_type", "param", "value"], unique=False
    )
    op.create_table(
        "fhir_idx_reference",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_reference")),
    )
    op.create_index(
        "ix_fhir_idx_reference_resource", "fhir_idx_reference", ["res_type", "res_id", "param"], unique=False
    )
    op.create_index(
        "ix_fhir_idx_reference_target",
        "fhir_idx_reference",
        ["target_type", "target_id", "param", "res_type"],
        unique=False,
    )
    op.create_table(
        "fhir_idx_string",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("exact", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_string")),
    )
    op.create_index(
        "ix_fhir_idx_string_resource", "fhir_idx_string", ["res_type", "res_id", "param"], unique=False
    )
    op.create_index(
        "ix_fhir_idx_string_search", "fhir_idx_string", ["res_type", "param", "value"], unique=False
    )
    op.create_table(
        "fhir_idx_token",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_token")),
    )
    op.create_index(
        "ix_fhir_idx_token_resource", "fhir_idx_token", ["res_type", "res_id", "param"], unique=False
    )
    op.create_index(
        "ix_fhir_idx_token_search", "fhir_idx_token", ["res_type", "param", "code", "system"], unique=False
    )
    op.create_table(
        "fhir_idx_uri",
        sa.Column("row_id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("row_id", name=op.f("pk_fhir_idx_uri")),
    )
    op.create_index("ix_fhir_idx_uri_resource", "fhir_idx_uri", ["res_type", "res_id", "param"], unique=False)
    op.create_index("ix_fhir_idx_uri_search", "fhir_idx_uri", ["res_type", "param", "value"], unique=False)
    op.create_table(
        "fhir_resource",
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("res_type", "res_id", name=op.f("pk_fhir_resource")),
    )
    op.create_index("ix_fhir_resource_last_updated", "fhir_resource", ["last_updated"], unique=False)
    op.create_table(
        "fhir_resource_history",
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("res_type", "res_id", "version", name=op.f("pk_fhir_resource_history")),
    )
    op.create_index(
        "ix_fhir_resource_history_last_updated", "fhir_resource_history", ["last_updated"], unique=False
    )


def downgrade() -> None:
    for name in TABLES:
        op.drop_table(name)
