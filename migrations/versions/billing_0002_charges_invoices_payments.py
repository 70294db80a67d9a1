"""billing: charges, BHYT coverage, invoices and their lines, payments, bank notifications

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-23 12:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "billing_charges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("charge_item_id", sa.String(length=64), nullable=False),
        sa.Column("item_code", sa.String(length=50), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("unit", sa.String(length=50), nullable=False),
        sa.Column("xml_group", sa.String(length=5), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=True),
        sa.Column("insurance_unit_price", sa.BigInteger(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("entered_by", sa.String(length=80), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("void_reason", sa.String(length=500), nullable=True),
        sa.Column("voided_by", sa.String(length=80), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_charges")),
        sa.UniqueConstraint("source", name=op.f("uq_billing_charges_source")),
    )
    op.create_index(op.f("ix_billing_charges_patient_id"), "billing_charges", ["patient_id"])
    op.create_index(op.f("ix_billing_charges_encounter_id"), "billing_charges", ["encounter_id"])

    op.create_table(
        "billing_coverages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("coverage_resource_id", sa.String(length=64), nullable=False),
        sa.Column("card_code", sa.String(length=15), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("registered_facility", sa.String(length=5), nullable=True),
        sa.Column("five_years_from", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("gateway_code", sa.String(length=3), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_coverages")),
    )
    op.create_index(op.f("ix_billing_coverages_patient_id"), "billing_coverages", ["patient_id"])

    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=20), nullable=True),
        sa.Column("encounter_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_resource_id", sa.String(length=64), nullable=True),
        sa.Column("visit_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("coverage_id", sa.Integer(), nullable=True),
        sa.Column("benefit_level", sa.Integer(), nullable=True),
        sa.Column("reasons", sa.String(length=100), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("fund", sa.BigInteger(), nullable=False),
        sa.Column("copay", sa.BigInteger(), nullable=False),
        sa.Column("patient_full", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["coverage_id"],
            ["billing_coverages.id"],
            name=op.f("fk_billing_invoices_coverage_id_billing_coverages"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint("encounter_id", name=op.f("uq_billing_invoices_encounter_id")),
        sa.UniqueConstraint("reference", name=op.f("uq_billing_invoices_reference")),
    )
    op.create_index(op.f("ix_billing_invoices_patient_id"), "billing_invoices", ["patient_id"])

    op.create_table(
        "billing_invoice_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("covered", sa.BigInteger(), nullable=False),
        sa.Column("fund", sa.BigInteger(), nullable=False),
        sa.Column("copay", sa.BigInteger(), nullable=False),
        sa.Column("patient_full", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["billing_charges.id"],
            name=op.f("fk_billing_invoice_lines_charge_id_billing_charges"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_invoice_lines_invoice_id_billing_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoice_lines")),
    )
    op.create_index(op.f("ix_billing_invoice_lines_invoice_id"), "billing_invoice_lines", ["invoice_id"])

    op.create_table(
        "billing_bank_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(length=100), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("account", sa.String(length=30), nullable=True),
        sa.Column("transacted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("review_reason", sa.String(length=20), nullable=True),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("resolved_by", sa.String(length=80), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=20), nullable=True),
        sa.Column("resolution_note", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_bank_notifications_invoice_id_billing_invoices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_bank_notifications")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_billing_bank_notifications_transaction_id")),
    )

    op.create_table(
        "billing_payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=80), nullable=True),
        sa.Column("notification_id", sa.Integer(), nullable=True),
        sa.Column("terminal_reference", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_payments_invoice_id_billing_invoices"),
        ),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["billing_bank_notifications.id"],
            name=op.f("fk_billing_payments_notification_id_billing_bank_notifications"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_payments")),
        sa.UniqueConstraint("notification_id", name=op.f("uq_billing_payments_notification_id")),
    )
    op.create_index(op.f("ix_billing_payments_invoice_id"), "billing_payments", ["invoice_id"])


def downgrade() -> None:
    op.drop_table("billing_payments")
    op.drop_table("billing_bank_notifications")
    op.drop_table("billing_invoice_lines")
    op.drop_table("billing_invoices")
    op.drop_table("billing_coverages")
    op.drop_table("billing_charges")
