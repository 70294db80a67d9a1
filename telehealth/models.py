"""Tables the telehealth context owns: call rooms, their participants, consents and chat."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from his.db import Base, as_utc, utcnow

ROOM_KINDS = ("visit", "consult")
ROOM_STATUSES = ("planned", "open", "ended", "cancelled")
PARTICIPANT_ROLES = ("host", "specialist", "doctor", "patient", "guest")
PARTICIPANT_STATES = ("invited", "waiting", "in_call", "left", "declined")


class Room(Base):
    """A video call that belongs to a video appointment or to a consult request.

    ``planned_start`` plus ``duration_minutes`` is the planned end shown as a countdown;
    ``grace_minutes`` later the server stops relaying signalling and the call is ended.
    """

    __tablename__ = "telehealth_rooms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # One room per video Appointment: two people opening the visit at once share it.
    appointment_id: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    service_request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    planned_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    grace_minutes: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(20), default="planned", index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recording_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def planned_end(self) -> datetime:
        """Return when the planned duration runs out (the countdown's zero)."""
        return as_utc(self.planned_start) + timedelta(minutes=self.duration_minutes)

    @property
    def hard_end(self) -> datetime:
        """Return when the grace period runs out and the server ends the call."""
        return self.planned_end + timedelta(minutes=self.grace_minutes)


class Participant(Base):
    """Someone invited to a room, with the hash of their own expiring join token."""

    __tablename__ = "telehealth_participants"
    __table_args__ = (UniqueConstraint("room_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("telehealth_rooms.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    needs_admission: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(20), default="invited")
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    joined_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    left_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Consent(Base):
    """A participant's consent (to recording), with when it was given or withdrawn."""

    __tablename__ = "telehealth_consents"
    __table_args__ = (UniqueConstraint("participant_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("telehealth_rooms.id", ondelete="CASCADE"), index=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("telehealth_participants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20), default="recording")
    given_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChatMessage(Base):
    """A chat line or a shared file of a call; a file is kept as a DocumentReference."""

    __tablename__ = "telehealth_chat_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("telehealth_rooms.id", ondelete="CASCADE"), index=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("telehealth_participants.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text, default="")
    document_reference_id: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(100))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Recording(Base):
    """One participant's media recorded by the media service, kept as a file in file storage.

    ``path`` is relative to the data folder; ``document_reference_id`` names the
    DocumentReference that links the finished file to the call's Encounter.
    """

    __tablename__ = "telehealth_recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("telehealth_rooms.id", ondelete="CASCADE"), index=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("telehealth_participants.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    video_frames: Mapped[int | None] = mapped_column(Integer)
    audio_frames: Mapped[int | None] = mapped_column(Integer)
    document_reference_id: Mapped[str | None] = mapped_column(String(64))
