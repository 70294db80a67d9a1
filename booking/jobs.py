"""Run the booking context's background work: sessions from templates, no-shows, reminders, the outbox.

Every job can run twice without harm: sessions are unique per clinic, day and part;
a no-show is only set on a booking still "booked"; a reminder is queued once per
booking, kind and channel; a message marked sent is never sent again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import select

from booking import notifications, services
from booking.models import Booking, ClinicSession, Notification
from his.db import as_utc, begin_immediate, get_session, utcnow
from his.jobs import register_job

SESSION_HORIZON_DAYS = 14
SOON_MINUTES = 30


def _zone(app: Flask) -> ZoneInfo:
    return ZoneInfo(app.extensions["vetinh.settings"].timezone)


def channels_for(app: Flask) -> notifications.Channels:
    """Read where messages go from the settings (webhook: ``VETINH_BOOKING_WEBHOOK_URL``)."""
    settings = app.extensions["vetinh.settings"]
    webhook = str(app.config.get("BOOKING_WEBHOOK_URL") or app.config.get("VETINH_BOOKING_WEBHOOK_URL") or "")
    return notifications.Channels(
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        sender=settings.mail_sender,
        webhook_url=webhook,
    )


def generate_sessions(app: Flask) -> int:
    """Create the coming two weeks' sessions from the weekly templates."""
    session = get_session()
    begin_immediate(session)
    zone = _zone(app)
    created = services.generate_sessions(
        session, today=datetime.now(zone).date(), days=SESSION_HORIZON_DAYS, zone=zone
    )
    return len(created)


def release_no_shows(app: Flask) -> int:
    """Mark bookings never checked in, once their session is over, as no-shows."""
    session = get_session()
    begin_immediate(session)
    return services.release_no_shows(session)


def _reminder_text(booking: Booking, when: datetime, zone: ZoneInfo, kind: str) -> tuple[str, str]:
    clinic = booking.session.clinic
    local = when.astimezone(zone)
    values = {
        "number": booking.queue_number,
        "clinic": clinic.name,
        "room": clinic.room,
        "time": local.strftime("%H:%M"),
        "date": local.strftime("%d/%m/%Y"),
    }
    with force_locale("vi"):
        if kind == "eve":
            subject = _("Reminder: your visit tomorrow, number %(number)s", **values)
        elif kind == "soon":
            subject = _("Your number %(number)s will be called soon", **values)
        else:
            subject = _("Booking confirmed: number %(number)s", **values)
        if booking.session.video and booking.appointment_id:
            body = _(
                "Your video visit number is %(number)s at %(clinic)s. "
                "Estimated call time: %(time)s on %(date)s. Join the video visit at %(link)s",
                link=services.video_link(booking.appointment_id),
                **values,
            )
        else:
            body = _(
                "Your queue number is %(number)s at %(clinic)s (%(room)s). "
                "Estimated call time: %(time)s on %(date)s. Show the QR code of your booking at the desk.",
                **values,
            )
    return subject, body


def queue_messages(booking: Booking, kind: str, when: datetime, zone: ZoneInfo) -> int:
    """Queue a message about a booking on every channel the patient can be reached by."""
    session = get_session()
    contact = notifications.patient_contact(session, booking.patient_id)
    subject, body = _reminder_text(booking, when, zone, kind)
    payload: dict[str, Any] = {"booking_id": booking.id, "queue_number": booking.queue_number}
    queued = 0
    for channel, recipient in (("email", contact.email), ("sms", contact.phone)):
        if not recipient:
            continue
        if notifications.enqueue(
            session,
            dedupe_key=f"{kind}:{booking.id}:{channel}",
            booking_id=booking.id,
            kind=kind,
            channel=channel,
            recipient=recipient,
            subject=subject,
            body=body,
            payload=payload,
        ):
            queued += 1
    return queued


def evening_reminders(app: Flask) -> dict[str, int]:
    """Remind everyone booked for tomorrow, then deliver the outbox."""
    session = get_session()
    begin_immediate(session)
    zone = _zone(app)
    tomorrow = datetime.now(zone).date() + timedelta(days=1)
    bookings = session.scalars(
        select(Booking)
        .join(ClinicSession, ClinicSession.id == Booking.session_id)
        .where(ClinicSession.day == tomorrow, Booking.status == "booked")
        .order_by(Booking.id)
    ).all()
    queued = sum(queue_messages(b, "eve", as_utc(b.estimated_call_at), zone) for b in bookings)
    counts = notifications.deliver_pending(session, channels_for(app))
    return {"queued": queued, **counts}


def soon_reminders(app: Flask) -> dict[str, int]:
    """Remind patients whose estimated call time is about half an hour away, then deliver."""
    session = get_session()
    begin_immediate(session)
    zone = _zone(app)
    now = utcnow()
    today = datetime.now(zone).date()
    bookings = session.scalars(
        select(Booking)
        .join(ClinicSession, ClinicSession.id == Booking.session_id)
        .where(ClinicSession.day == today, Booking.status.in_(("booked", "arrived")))
        .order_by(Booking.id)
    ).all()
    queued = 0
    for booking in bookings:
        estimate = services.queue_position(session, booking, now).estimated_call_at
        if estimate is not None and estimate - now <= timedelta(minutes=SOON_MINUTES):
            queued += queue_messages(booking, "soon", estimate, zone)
    counts = notifications.deliver_pending(session, channels_for(app))
    return {"queued": queued, **counts}


def queue_confirmations(app: Flask, *, within: timedelta = timedelta(hours=2)) -> int:
    """Queue a confirmation for each recent online booking that has none yet.

    Done here rather than in the booking request, so the request holds its counter lock
    for as short a time as possible.
    """
    session = get_session()
    zone = _zone(app)
    confirmed = select(Notification.booking_id).where(Notification.kind == "confirm")
    bookings = session.scalars(
        select(Booking)
        .where(
            Booking.channel == "online",
            Booking.status == "booked",
            Booking.created_at >= utcnow() - within,
            Booking.id.not_in(confirmed),
        )
        .order_by(Booking.id)
    ).all()
    return sum(queue_messages(b, "confirm", as_utc(b.estimated_call_at), zone) for b in bookings)


def deliver_notifications(app: Flask) -> dict[str, int]:
    """Queue confirmations of new bookings, then deliver whatever the outbox holds (and retries)."""
    session = get_session()
    begin_immediate(session)
    queued = queue_confirmations(app)
    return {"queued": queued, **notifications.deliver_pending(session, channels_for(app))}


register_job("booking.generate_sessions", generate_sessions, "cron", hour=1, minute=0)
register_job("booking.release_no_shows", release_no_shows, "interval", minutes=10)
register_job("booking.evening_reminders", evening_reminders, "cron", hour=19, minute=0)
register_job("booking.soon_reminders", soon_reminders, "interval", minutes=5)
register_job("booking.deliver_notifications", deliver_notifications, "interval", minutes=1)
