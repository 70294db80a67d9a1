"""Define the booking context's tables: clinics, templates, closures, sessions, counters, bookings, calls."""

from __future__ import annotations

from datetime import date, datetime, time

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from his.db import Base, utcnow
from his.models import Site

PARTS: tuple[str, ...] = ("morning", "afternoon")
NUMBERING_SCHEMES: tuple[str, ...] = ("split", "alternate")
CHANNELS: tuple[str, ...] = ("online", "walkin")
# booked → arrived → called → done; or cancelled / no_show / missed (skipped too often).
BOOKING_STATUSES: tuple[str, ...] = ("booked", "arrived", "called", "done", "cancelled", "no_show", "missed")
ACTIVE_STATUSES: tuple[str, ...] = ("booked", "arrived", "called")


class Department(Base):
    """A department of a site (khoa), mirrored as a FHIR HealthcareService."""

    __tablename__ = "booking_departments"
    __table_args__ = (UniqueConstraint("site_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    healthcare_service_id: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Clinic(Base):
    """A consulting room (phòng khám) with its numbering and booking-window rules; a FHIR Location."""

    __tablename__ = "booking_clinics"
    __table_args__ = (UniqueConstraint("site_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("booking_departments.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    room: Mapped[str] = mapped_column(String(40))
    location_id: Mapped[str | None] = mapped_column(String(64))
    numbering: Mapped[str] = mapped_column(String(20), default="split")
    online_capacity: Mapped[int] = mapped_column(Integer, default=60)
    walkin_capacity: Mapped[int] = mapped_column(Integer, default=40)
    minutes_per_patient: Mapped[int] = mapped_column(Integer, default=6)
    window_days_before: Mapped[int] = mapped_column(Integer, default=7)
    window_opens_at: Mapped[time] = mapped_column(Time, default=time(0, 0))
    window_closes_minutes_before_end: Mapped[int] = mapped_column(Integer, default=30)
    cancel_minutes_before_start: Mapped[int] = mapped_column(Integer, default=60)
    skip_back_places: Mapped[int] = mapped_column(Integer, default=3)
    max_skips: Mapped[int] = mapped_column(Integer, default=2)
    no_show_minutes_after_end: Mapped[int] = mapped_column(Integer, default=0)
    # The price-list item code of the clinic's visit fee, charged at check-in; none charges nothing.
    visit_code: Mapped[str | None] = mapped_column(String(50))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # Loaded when asked for (once per request: they are many-to-one), not joined into every
    # session and booking read: a booking's row would otherwise carry 14 more columns.
    department: Mapped[Department] = relationship()
    site: Mapped[Site] = relationship()


class WeeklyTemplate(Base):
    """A recurring session: this clinic, this weekday and part of day, this doctor."""

    __tablename__ = "booking_weekly_templates"
    __table_args__ = (UniqueConstraint("clinic_id", "weekday", "part"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("booking_clinics.id", ondelete="CASCADE"), index=True)
    weekday: Mapped[int] = mapped_column(Integer)  # Monday is 0, as date.weekday()
    part: Mapped[str] = mapped_column(String(10))
    starts: Mapped[time] = mapped_column(Time)
    ends: Mapped[time] = mapped_column(Time)
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    online_capacity: Mapped[int | None] = mapped_column(Integer)
    walkin_capacity: Mapped[int | None] = mapped_column(Integer)
    minutes_per_patient: Mapped[int | None] = mapped_column(Integer)
    # A video template's sessions are seen by video call (telehealth), not in the room.
    video: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Closure(Base):
    """A day (or part of one) when a clinic, or the whole site, sees no patients: a holiday."""

    __tablename__ = "booking_closures"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    clinic_id: Mapped[int | None] = mapped_column(ForeignKey("booking_clinics.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date, index=True)
    part: Mapped[str | None] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(200))


class ClinicSession(Base):
    """One clinic session (buổi khám): clinic, doctor, day, morning or afternoon, and its numbers.

    The online numbers are ``online_first + k * online_step`` for ``k < online_capacity``
    and the walk-in numbers likewise; the ranges never overlap.
    """

    __tablename__ = "booking_sessions"
    __table_args__ = (UniqueConstraint("clinic_id", "day", "part"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("booking_clinics.id"), index=True)
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    part: Mapped[str] = mapped_column(String(10))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    minutes_per_patient: Mapped[int] = mapped_column(Integer)
    online_first: Mapped[int] = mapped_column(Integer)
    online_step: Mapped[int] = mapped_column(Integer)
    online_capacity: Mapped[int] = mapped_column(Integer)
    walkin_first: Mapped[int] = mapped_column(Integer)
    walkin_step: Mapped[int] = mapped_column(Integer)
    walkin_capacity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="open")
    # A video session's patients are seen by video call: no check-in at the desk is needed.
    video: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("booking_weekly_templates.id", ondelete="SET NULL")
    )
    schedule_id: Mapped[str | None] = mapped_column(String(64))
    slot_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    clinic: Mapped[Clinic] = relationship(lazy="joined")

    @property
    def capacity(self) -> int:
        return self.online_capacity + self.walkin_capacity


class SessionCounter(Base):
    """How many numbers of each range a session has given out; only ever goes up."""

    __tablename__ = "booking_counters"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("booking_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    online_issued: Mapped[int] = mapped_column(Integer, default=0)
    walkin_issued: Mapped[int] = mapped_column(Integer, default=0)


class Booking(Base):
    """A queue number held by a patient in a session, online or at the desk."""

    __tablename__ = "booking_bookings"
    __table_args__ = (
        UniqueConstraint("session_id", "queue_number"),
        UniqueConstraint("idempotency_owner", "idempotency_key"),
        Index(
            "uq_booking_bookings_active_patient",
            "session_id",
            "patient_id",
            unique=True,
            sqlite_where=text("status != 'cancelled'"),
            postgresql_where=text("status != 'cancelled'"),
        ),
        Index("ix_booking_bookings_session_status", "session_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("booking_sessions.id"))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    queue_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="booked")
    sort_key: Mapped[int] = mapped_column(Integer)
    skip_count: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_owner: Mapped[str | None] = mapped_column(String(80))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    booked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    estimated_call_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    appointment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checked_in_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    called_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    survey_response_id: Mapped[str | None] = mapped_column(String(64))

    session: Mapped[ClinicSession] = relationship(lazy="joined")


class QueueCall(Base):
    """One action of the doctor's console on a number: called, recalled, skipped, done."""

    __tablename__ = "booking_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("booking_sessions.id", ondelete="CASCADE"), index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("booking_bookings.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Notification(Base):
    """One message in the outbox: a reminder or a confirmation, on one channel, to one recipient.

    ``dedupe_key`` is unique, so running a reminder job twice queues nothing twice;
    ``status`` goes pending → sent, or → failed with the error kept.
    """

    __tablename__ = "booking_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("booking_bookings.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
