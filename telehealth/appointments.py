"""Video visits booked through booking's clinic sessions: one room per video Appointment.

Booking links the patient, and the doctor from the console, to
``/telehealth/appointments/<appointment id>``. This module resolves that appointment
through ``booking.services.video_visit``, decides who the caller is to the visit, and
gets or creates the visit's single room. Functions take a SQLAlchemy session and never
commit; the request owns the unit of work.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir import services as store
from his import audit
from his.db import as_utc, utcnow
from his.errors import N_, Forbidden, Gone, NotFound
from his.events import publish
from his.models import PatientLink, Site, User
from his.security import Principal
from telehealth import services
from telehealth.models import Room

if TYPE_CHECKING:
    from booking.services import VideoVisit

GRACE_MINUTES = 5
MIN_MINUTES = 5
MAX_MINUTES = 240
CANCELLED_BOOKINGS = frozenset({"cancelled"})
FINISHED_BOOKINGS = frozenset({"done", "no_show", "missed"})
HOST_ROLE = "doctor"
_APPOINTMENT_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")


class VideoVisitNotFound(NotFound):
    code = "VIDEO_VISIT_NOT_FOUND"
    message = N_("There is no video visit for this appointment.")


class VideoVisitNotYours(Forbidden):
    code = "VIDEO_VISIT_NOT_YOURS"
    message = N_("This video visit belongs to another patient or another hospital.")


class VideoVisitCancelled(Gone):
    code = "VIDEO_VISIT_CANCELLED"
    message = N_("This video visit was cancelled. Book a new one if you still need to see the doctor.")


class VideoVisitOver(Gone):
    code = "VIDEO_VISIT_OVER"
    message = N_("This video visit is over.")


def find_video_visit(session: Session, appointment_id: str) -> VideoVisit:
    """Return the video visit booked as this Appointment.

    Raises VideoVisitNotFound for an unknown appointment or one that is not a video visit.
    """
    from booking.services import video_visit

    visit = video_visit(session, appointment_id) if _APPOINTMENT_ID.match(appointment_id) else None
    if visit is None:
        raise VideoVisitNotFound()
    return visit


def _linked_patient_ids(session: Session, principal: Principal) -> set[str]:
    ids = {principal.patient_id} if principal.patient_id else set()
    if principal.user_id is not None:
        ids.update(
            session.scalars(select(PatientLink.patient_id).where(PatientLink.user_id == principal.user_id))
        )
    return ids


def caller_side(session: Session, principal: Principal, visit: VideoVisit) -> str:
    """Tell whether the caller comes to the visit as its ``"patient"`` or as ``"staff"``.

    The patient side is the patient's own account or an account linked to the patient (a
    parent); the staff side is a doctor or nurse of the visit's site. Raises
    VideoVisitNotYours (audited) for anyone else.
    """
    if principal.role == "patient" and visit.patient_id in _linked_patient_ids(session, principal):
        return "patient"
    if principal.role in services.STAFF_CALL_ROLES and principal.site_id == visit.site_id:
        return "staff"
    audit.record(
        "read",
        "Appointment",
        visit.appointment_id,
        patient_id=visit.patient_id,
        outcome="denied",
        detail="video visit of another patient or site",
    )
    raise VideoVisitNotYours()


def ensure_bookable(visit: VideoVisit) -> None:
    """Check that the visit's booking still stands.

    Raises VideoVisitCancelled for a cancelled booking, VideoVisitOver for one that is
    done or whose patient did not come.
    """
    if visit.status in CANCELLED_BOOKINGS:
        raise VideoVisitCancelled()
    if visit.status in FINISHED_BOOKINGS:
        raise VideoVisitOver()


def _schedule(visit: VideoVisit, now: datetime) -> tuple[datetime, int]:
    """Return the room's planned start and minutes for the visit as booked now.

    The start is the booking's estimated call time; a queue running so late that this
    window is already over starts the call now instead of refusing it.
    """
    minutes = min(max(visit.duration_minutes, MIN_MINUTES), MAX_MINUTES)
    start = as_utc(visit.planned_start)
    if start + timedelta(minutes=minutes + GRACE_MINUTES) <= now:
        start = now
    return start, minutes


def _room_of(session: Session, appointment_id: str) -> Room | None:
    return session.scalar(select(Room).where(Room.appointment_id == appointment_id))


def _create_room(session: Session, visit: VideoVisit, now: datetime) -> Room:
    start, minutes = _schedule(visit, now)
    room = services._new_room(
        session,
        kind="visit",
        site_id=visit.site_id,
        patient_id=visit.patient_id,
        appointment_id=visit.appointment_id,
        service_request_id=None,
        planned_start=start,
        duration_minutes=minutes,
        grace_minutes=GRACE_MINUTES,
        created_by=None,
    )
    doctor = session.get(User, visit.doctor_user_id) if visit.doctor_user_id is not None else None
    if doctor is not None and doctor.active and doctor.site_id == visit.site_id:
        services.add_participant(session, room, display_name=doctor.full_name, role="host", user_id=doctor.id)
    patient_user = services._patient_user(session, visit.patient_id)
    services.add_participant(
        session,
        room,
        display_name=services._patient_name(session, visit.patient_id),
        role="patient",
        user_id=patient_user.id if patient_user else None,
        patient_id=visit.patient_id,
        needs_admission=True,
    )
    return room


def _follow_booking(room: Room, visit: VideoVisit, now: datetime) -> None:
    """Move a room nobody has entered yet to the booking's current estimate."""
    if room.status != "planned":
        return
    start, minutes = _schedule(visit, now)
    if as_utc(room.planned_start) != start or room.duration_minutes != minutes:
        room.planned_start = start
        room.duration_minutes = minutes


def visit_room(session: Session, principal: Principal, visit: VideoVisit, side: str) -> Room:
    """Get or create the visit's one room and make sure the caller is invited to it.

    Two callers opening the visit at once end in the same room: the room's appointment id
    is unique, and the one who loses the race reads the winner's room. The session's
    doctor hosts; without one, the first doctor of the site who opens the visit does.
    Other staff of the site join without waiting; the patient side waits in the lobby.
    Raises RoomFull when the room has its most invitations.
    """
    now = utcnow()
    room = _room_of(session, visit.appointment_id)
    created = False
    if room is None:
        try:
            with session.begin_nested():
                room = _create_room(session, visit, now)
            created = True
        except IntegrityError:
            room = _room_of(session, visit.appointment_id)
            if room is None:
                raise
    if session.get_bind().dialect.name == "postgresql":
        # Decide who hosts and who is invited one caller at a time.
        session.refresh(room, with_for_update=True)
    _follow_booking(room, visit, now)
    _invite_caller(session, principal, room, visit, side)
    if created:
        site = session.get(Site, visit.site_id)
        publish(
            "telehealth.visit.scheduled",
            {
                "room_id": room.id,
                "site": site.code if site else None,
                "patient_id": visit.patient_id,
                "appointment_id": visit.appointment_id,
                "planned_start": store.instant(as_utc(room.planned_start)),
            },
        )
        audit.record("create", "TelehealthRoom", room.id, patient_id=visit.patient_id)
    session.flush()
    return room


def _invite_caller(session: Session, principal: Principal, room: Room, visit: VideoVisit, side: str) -> None:
    participants = services.room_participants(session, room)
    if any(p.user_id == principal.user_id for p in participants):
        return
    name = principal.full_name or principal.username
    if side == "patient":
        unclaimed = next(
            (
                p
                for p in participants
                if p.role == "patient" and p.patient_id == visit.patient_id and p.user_id is None
            ),
            None,
        )
        if unclaimed is not None:
            unclaimed.user_id = principal.user_id
            return
        services.add_participant(
            session,
            room,
            display_name=services._patient_name(session, visit.patient_id),
            role="patient",
            user_id=principal.user_id,
            patient_id=visit.patient_id,
            needs_admission=True,
        )
        return
    has_host = any(p.role == "host" for p in participants)
    role = "host" if principal.role == HOST_ROLE and not has_host else "doctor"
    services.add_participant(session, room, display_name=name, role=role, user_id=principal.user_id)
