"""booking: clinics, weekly templates, closures, sessions, counters, bookings, calls, notifications

Revision ID: booking_0001
Revises:
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "booking_0001"
down_revision = None
branch_labels = ("booking",)
depends_on = "his_0001"

TABLES = (
    "booking_notifications",
    "booking_calls",
    "booking_counters",
    "booking_bookings",
    "booking_sessions",
    "booking_weekly_templates",
    "booking_closures",
    "booking_clinics",
    "booking_departments",
)


def upgrade() -> None:
    op.create_table(
        "booking_departments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("healthcare_service_id", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_booking_departments_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_departments")),
        sa.UniqueConstraint("site_id", "code", name=op.f("uq_booking_departments_site_id_code")),
    )
    op.create_index(op.f("ix_booking_departments_site_id"), "booking_departments", ["site_id"], unique=False)
    op.create_table(
        "booking_clinics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("room", sa.String(length=40), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=True),
        sa.Column("numbering", sa.String(length=20), nullable=False),
        sa.Column("online_capacity", sa.Integer(), nullable=False),
        sa.Column("walkin_capacity", sa.Integer(), nullable=False),
        sa.Column("minutes_per_patient", sa.Integer(), nullable=False),
        sa.Column("window_days_before", sa.Integer(), nullable=False),
        sa.Column("window_opens_at", sa.Time(), nullable=False),
        sa.Column("window_closes_minutes_before_end", sa.Integer(), nullable=False),
        sa.Column("cancel_minutes_before_start", sa.Integer(), nullable=False),
        sa.Column("skip_back_places", sa.Integer(), nullable=False),
        sa.Column("max_skips", sa.Integer(), nullable=False),
        sa.Column("no_show_minutes_after_end", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"],
            ["booking_departments.id"],
            name=op.f("fk_booking_clinics_department_id_booking_departments"),
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_booking_clinics_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_clinics")),
        sa.UniqueConstraint("site_id", "code", name=op.f("uq_booking_clinics_site_id_code")),
    )
    op.create_index(
        op.f("ix_booking_clinics_department_id"), "booking_clinics", ["department_id"], unique=False
    )
    op.create_index(op.f("ix_booking_clinics_site_id"), "booking_clinics", ["site_id"], unique=False)
    op.create_table(
        "booking_closures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("part", sa.String(length=10), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["booking_clinics.id"],
            name=op.f("fk_booking_closures_clinic_id_booking_clinics"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_booking_closures_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_closures")),
    )
    op.create_index(op.f("ix_booking_closures_day"), "booking_closures", ["day"], unique=False)
    op.create_index(op.f("ix_booking_closures_site_id"), "booking_closures", ["site_id"], unique=False)
    op.create_table(
        "booking_weekly_templates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("part", sa.String(length=10), nullable=False),
        sa.Column("starts", sa.Time(), nullable=False),
        sa.Column("ends", sa.Time(), nullable=False),
        sa.Column("doctor_id", sa.Integer(), nullable=True),
        sa.Column("online_capacity", sa.Integer(), nullable=True),
        sa.Column("walkin_capacity", sa.Integer(), nullable=True),
        sa.Column("minutes_per_patient", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["booking_clinics.id"],
            name=op.f("fk_booking_weekly_templates_clinic_id_booking_clinics"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["users.id"], name=op.f("fk_booking_weekly_templates_doctor_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_weekly_templates")),
        sa.UniqueConstraint(
            "clinic_id", "weekday", "part", name=op.f("uq_booking_weekly_templates_clinic_id_weekday_part")
        ),
    )
    op.create_index(
        op.f("ix_booking_weekly_templates_clinic_id"), "booking_weekly_templates", ["clinic_id"], unique=False
    )
    op.create_table(
        "booking_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.Column("doctor_id", sa.Integer(), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("part", sa.String(length=10), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("minutes_per_patient", sa.Integer(), nullable=False),
        sa.Column("online_first", sa.Integer(), nullable=False),
        sa.Column("online_step", sa.Integer(), nullable=False),
        sa.Column("online_capacity", sa.Integer(), nullable=False),
        sa.Column("walkin_first", sa.Integer(), nullable=False),
        sa.Column("walkin_step", sa.Integer(), nullable=False),
        sa.Column("walkin_capacity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=True),
        sa.Column("schedule_id", sa.String(length=64), nullable=True),
        sa.Column("slot_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["booking_clinics.id"], name=op.f("fk_booking_sessions_clinic_id_booking_clinics")
        ),
        sa.ForeignKeyConstraint(
            ["doctor_id"], ["users.id"], name=op.f("fk_booking_sessions_doctor_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["booking_weekly_templates.id"],
            name=op.f("fk_booking_sessions_template_id_booking_weekly_templates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_sessions")),
        sa.UniqueConstraint("clinic_id", "day", "part", name=op.f("uq_booking_sessions_clinic_id_day_part")),
    )
    op.create_index(op.f("ix_booking_sessions_clinic_id"), "booking_sessions", ["clinic_id"], unique=False)
    op.create_index(op.f("ix_booking_sessions_day"), "booking_sessions", ["day"], unique=False)
    op.create_index(op.f("ix_booking_sessions_doctor_id"), "booking_sessions", ["doctor_id"], unique=False)
    op.create_table(
        "booking_bookings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("queue_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("sort_key", sa.Integer(), nullable=False),
        sa.Column("skip_count", sa.Integer(), nullable=False),
        sa.Column("idempotency_owner", sa.String(length=80), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("booked_by", sa.Integer(), nullable=True),
        sa.Column("estimated_call_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=True),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["booked_by"], ["users.id"], name=op.f("fk_booking_bookings_booked_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["booking_sessions.id"],
            name=op.f("fk_booking_bookings_session_id_booking_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_bookings")),
        sa.UniqueConstraint(
            "idempotency_owner",
            "idempotency_key",
            name=op.f("uq_booking_bookings_idempotency_owner_idempotency_key"),
        ),
        sa.UniqueConstraint(
            "session_id", "queue_number", name=op.f("uq_booking_bookings_session_id_queue_number")
        ),
    )
    op.create_index(op.f("ix_booking_bookings_patient_id"), "booking_bookings", ["patient_id"], unique=False)
    op.create_index(
        "ix_booking_bookings_session_status", "booking_bookings", ["session_id", "status"], unique=False
    )
    op.create_index(
        "uq_booking_bookings_active_patient",
        "booking_bookings",
        ["session_id", "patient_id"],
        unique=True,
        sqlite_where=sa.text("status != 'cancelled'"),
        postgresql_where=sa.text("status != 'cancelled'"),
    )
    op.create_table(
        "booking_counters",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("online_issued", sa.Integer(), nullable=False),
        sa.Column("walkin_issued", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["booking_sessions.id"],
            name=op.f("fk_booking_counters_session_id_booking_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_booking_counters")),
    )
    op.create_table(
        "booking_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("by_user_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["booking_bookings.id"],
            name=op.f("fk_booking_calls_booking_id_booking_bookings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["by_user_id"], ["users.id"], name=op.f("fk_booking_calls_by_user_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["booking_sessions.id"],
            name=op.f("fk_booking_calls_session_id_booking_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_calls")),
    )
    op.create_index(op.f("ix_booking_calls_booking_id"), "booking_calls", ["booking_id"], unique=False)
    op.create_index(op.f("ix_booking_calls_session_id"), "booking_calls", ["session_id"], unique=False)
    op.create_table(
        "booking_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["booking_bookings.id"],
            name=op.f("fk_booking_notifications_booking_id_booking_bookings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_notifications")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_booking_notifications_dedupe_key")),
    )
    op.create_index(
        op.f("ix_booking_notifications_status"), "booking_notifications", ["status"], unique=False
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
