"""telehealth: call rooms, participants with hashed join tokens, lobby state, consents, chat

Revision ID: telehealth_0001
Revises:
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "telehealth_0001"
down_revision = None
branch_labels = ("telehealth",)
depends_on = "his_0001"


def upgrade() -> None:
    op.create_table(
        "telehealth_rooms",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("appointment_id", sa.String(length=64), nullable=True),
        sa.Column("service_request_id", sa.String(length=64), nullable=True),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("planned_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("grace_minutes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recording_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_telehealth_rooms_created_by_users")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_telehealth_rooms_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telehealth_rooms")),
    )
    with op.batch_alter_table("telehealth_rooms", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telehealth_rooms_appointment_id"), ["appointment_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_telehealth_rooms_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_telehealth_rooms_service_request_id"), ["service_request_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_telehealth_rooms_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_telehealth_rooms_status"), ["status"], unique=False)

    op.create_table(
        "telehealth_participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("needs_admission", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["telehealth_rooms.id"],
            name=op.f("fk_telehealth_participants_room_id_telehealth_rooms"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_telehealth_participants_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telehealth_participants")),
        sa.UniqueConstraint("room_id", "user_id", name=op.f("uq_telehealth_participants_room_id_user_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_telehealth_participants_token_hash")),
    )
    with op.batch_alter_table("telehealth_participants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telehealth_participants_room_id"), ["room_id"], unique=False)

    op.create_table(
        "telehealth_chat_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(length=32), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("document_reference_id", sa.String(length=64), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("content_type", sa.String(length=100), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["telehealth_participants.id"],
            name=op.f("fk_telehealth_chat_messages_participant_id_telehealth_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["telehealth_rooms.id"],
            name=op.f("fk_telehealth_chat_messages_room_id_telehealth_rooms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telehealth_chat_messages")),
    )
    with op.batch_alter_table("telehealth_chat_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telehealth_chat_messages_room_id"), ["room_id"], unique=False)

    op.create_table(
        "telehealth_consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(length=32), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["telehealth_participants.id"],
            name=op.f("fk_telehealth_consents_participant_id_telehealth_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["telehealth_rooms.id"],
            name=op.f("fk_telehealth_consents_room_id_telehealth_rooms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telehealth_consents")),
        sa.UniqueConstraint(
            "participant_id", "kind", name=op.f("uq_telehealth_consents_participant_id_kind")
        ),
    )
    with op.batch_alter_table("telehealth_consents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telehealth_consents_room_id"), ["room_id"], unique=False)
    op.create_table(
        "telehealth_recordings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(length=32), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("video_frames", sa.Integer(), nullable=True),
        sa.Column("audio_frames", sa.Integer(), nullable=True),
        sa.Column("document_reference_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["telehealth_participants.id"],
            name=op.f("fk_telehealth_recordings_participant_id_telehealth_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["telehealth_rooms.id"],
            name=op.f("fk_telehealth_recordings_room_id_telehealth_rooms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telehealth_recordings")),
    )
    with op.batch_alter_table("telehealth_recordings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telehealth_recordings_room_id"), ["room_id"], unique=False)


def downgrade() -> None:
    op.drop_table("telehealth_recordings")
    op.drop_table("telehealth_consents")
    op.drop_table("telehealth_chat_messages")
    op.drop_table("telehealth_participants")
    op.drop_table("telehealth_rooms")
