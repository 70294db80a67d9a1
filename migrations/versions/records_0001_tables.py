"""records: drug catalogue, signing keys, prescriptions, signatures and the national outbox

Revision ID: records_0001
Revises:
Create Date: 2026-11-23 11:54:45.299665
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "records_0001"
down_revision = None
branch_labels = ("records",)
depends_on = "his_0001"


def upgrade() -> None:
    op.create_table(
        "records_drugs",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("search_text", sa.String(length=400), nullable=False),
        sa.Column("antibiotic", sa.Boolean(), nullable=False),
        sa.Column("row", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_records_drugs")),
    )
    with op.batch_alter_table("records_drugs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_records_drugs_search_text"), ["search_text"], unique=False)

    op.create_table(
        "records_prescriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=14), nullable=False),
        sa.Column("facility_code", sa.String(length=5), nullable=False),
        sa.Column("kind", sa.String(length=1), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("prescriber_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("weight_kg", sa.Numeric(precision=6, scale=2), nullable=True),
        sa.Column("guardian_name", sa.String(length=200), nullable=True),
        sa.Column("advice", sa.Text(), nullable=True),
        sa.Column("follow_up", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(
            ["prescriber_id"], ["users.id"], name=op.f("fk_records_prescriptions_prescriber_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_records_prescriptions_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_prescriptions")),
        sa.UniqueConstraint("code", name=op.f("uq_records_prescriptions_code")),
    )
    with op.batch_alter_table("records_prescriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_records_prescriptions_encounter_id"), ["encounter_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_records_prescriptions_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_records_prescriptions_prescriber_id"), ["prescriber_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_records_prescriptions_site_id"), ["site_id"], unique=False)

    op.create_table(
        "records_signing_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("encrypted_key", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_records_signing_keys_site_id_sites"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_records_signing_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_signing_keys")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_records_signing_keys_fingerprint")),
    )
    with op.batch_alter_table("records_signing_keys", schema=None) as batch_op:
        batch_op.create_index("ix_records_signing_keys_owner", ["site_id", "user_id", "kind"], unique=False)

    op.create_table(
        "records_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prescription_id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["prescription_id"],
            ["records_prescriptions.id"],
            name=op.f("fk_records_outbox_prescription_id_records_prescriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_outbox")),
        sa.UniqueConstraint("prescription_id", name=op.f("uq_records_outbox_prescription_id")),
    )
    with op.batch_alter_table("records_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_records_outbox_status"), ["status"], unique=False)

    op.create_table(
        "records_prescription_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prescription_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("drug_code", sa.String(length=40), nullable=False),
        sa.Column("medication_request_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=12, scale=3), nullable=False),
        sa.Column("dispensed", sa.Numeric(precision=12, scale=3), nullable=False),
        sa.ForeignKeyConstraint(
            ["prescription_id"],
            ["records_prescriptions.id"],
            name=op.f("fk_records_prescription_items_prescription_id_records_prescriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_prescription_items")),
    )
    with op.batch_alter_table("records_prescription_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_records_prescription_items_prescription_id"), ["prescription_id"], unique=False
        )

    op.create_table(
        "records_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("prescription_id", sa.Integer(), nullable=True),
        sa.Column("provenance_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("signer_id", sa.Integer(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["records_signing_keys.id"],
            name=op.f("fk_records_signatures_key_id_records_signing_keys"),
        ),
        sa.ForeignKeyConstraint(
            ["prescription_id"],
            ["records_prescriptions.id"],
            name=op.f("fk_records_signatures_prescription_id_records_prescriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["signer_id"], ["users.id"], name=op.f("fk_records_signatures_signer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"],
            ["records_signatures.id"],
            name=op.f("fk_records_signatures_supersedes_id_records_signatures"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records_signatures")),
        sa.UniqueConstraint("provenance_id", name=op.f("uq_records_signatures_provenance_id")),
    )
    with op.batch_alter_table("records_signatures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_records_signatures_encounter_id"), ["encounter_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_records_signatures_prescription_id"), ["prescription_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("records_signatures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_signatures_prescription_id"))
        batch_op.drop_index(batch_op.f("ix_records_signatures_encounter_id"))

    op.drop_table("records_signatures")
    with op.batch_alter_table("records_prescription_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_prescription_items_prescription_id"))

    op.drop_table("records_prescription_items")
    with op.batch_alter_table("records_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_outbox_status"))

    op.drop_table("records_outbox")
    with op.batch_alter_table("records_signing_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_records_signing_keys_owner")

    op.drop_table("records_signing_keys")
    with op.batch_alter_table("records_prescriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_prescriptions_site_id"))
        batch_op.drop_index(batch_op.f("ix_records_prescriptions_prescriber_id"))
        batch_op.drop_index(batch_op.f("ix_records_prescriptions_patient_id"))
        batch_op.drop_index(batch_op.f("ix_records_prescriptions_encounter_id"))

    op.drop_table("records_prescriptions")
    with op.batch_alter_table("records_drugs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_drugs_search_text"))

    op.drop_table("records_drugs")
