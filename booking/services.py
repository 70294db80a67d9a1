"""Decide booking: clinics and sessions, queue numbers, check-in, the doctor's queue and estimates.

Every function takes the unit of work's session and never commits. A queue number
comes from one ``UPDATE booking_counters ... RETURNING`` inside the booking's
transaction: PostgreSQL holds the counter row's lock until the booking commits, and
on SQLite the caller has taken the write lock (``his.db.begin_immediate``) before the
transaction's first statement. A counter only goes up, so a cancelled number is
never given to anyone else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from booking import fhir_mapping
from booking.models import (
    ACTIVE_STATUSES,
    NUMBERING_SCHEMES,
    PARTS,
    Booking,
    Clinic,
    ClinicSession,
    Closure,
    Department,
    QueueCall,
    SessionCounter,
    WeeklyTemplate,
)
from fhir import services as store
from his import events
from his.db import as_utc, core_connection, utcnow
from his.errors import N_, BadRequest, Conflict, NotFound, ValidationFailed, VetinhError
from his.models import Site, User
from his.policy import grant_site_access

SORT_SPACING = 1000
COUNTER_TABLE = cast(Table, SessionCounter.__table__)
BOOKING_TABLE = cast(Table, Booking.__table__)
VISIT_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$")

log = logging.getLogger(__name__)


class SessionFull(Conflict):
    """Every online number of the session is taken."""

    code = "SESSION_FULL"
    message = N_("This session has no online numbers left.")


def _aware(value: datetime) -> datetime:
    return as_utc(value)


# --- directory -------------------------------------------------------------------------------


def create_department(session: Session, site: Site, *, code: str, name: str) -> Department:
    """Add a department and its HealthcareService. Raises ValidationFailed for blank fields."""
    _require({"code": code, "name": name})
    stored = store.create(
        session,
        fhir_mapping.healthcare_service(
            code=code, name=name, site_code=site.code, organization_id=site.organization_id
        ),
    )
    department = Department(site_id=site.id, code=code, name=name, healthcare_service_id=stored.id)
    session.add(department)
    session.flush()
    return department


def create_clinic(
    session: Session,
    department: Department,
    *,
    code: str,
    name: str,
    room: str,
    **rules: Any,
) -> Clinic:
    """Add a clinic (its Location) with numbering and booking-window rules.

    Raises ValidationFailed for blank fields or an unknown numbering scheme or rule.
    """
    _require({"code": code, "name": name, "room": room})
    unknown = set(rules) - {c.key for c in Clinic.__table__.columns}
    if unknown:
        raise ValidationFailed(fields={k: N_("Unknown setting.") for k in unknown})
    if rules.get("numbering", "split") not in NUMBERING_SCHEMES:
        raise ValidationFailed(fields={"numbering": N_("Use split or alternate numbering.")})
    if "visit_code" in rules:
        rules["visit_code"] = clean_visit_code(rules["visit_code"])
    site = session.get(Site, department.site_id)
    assert site is not None
    stored = store.create(
        session,
        fhir_mapping.location(
            code=code, name=name, room=room, site_code=site.code, organization_id=site.organization_id
        ),
    )
    clinic = Clinic(
        site_id=department.site_id,
        department_id=department.id,
        code=code,
        name=name,
        room=room,
        location_id=stored.id,
        **rules,
    )
    session.add(clinic)
    session.flush()
    if department.healthcare_service_id:
        service = store.read(session, "HealthcareService", department.healthcare_service_id).resource
        service.setdefault("location", []).append({"reference": f"Location/{stored.id}"})
        store.update(session, "HealthcareService", department.healthcare_service_id, service)
    return clinic


def clean_visit_code(raw: str | None) -> str | None:
    """Return a visit fee's price-list code trimmed, or None for a blank one (no fee).

    Raises ValidationFailed (field ``visit_code``) for a code that no price list could hold.
    """
    code = (raw or "").strip()
    if not code:
        return None
    if not VISIT_CODE_RE.match(code):
        raise ValidationFailed(
            N_("Some fields are not valid."),
            fields={"visit_code": N_("Use the price-list code: letters, digits, dots or dashes.")},
        )
    return code


@dataclass(frozen=True)
class VisitFee:
    """The price-list item a clinic charges for a visit, as billing prices it on a day."""

    code: str
    name: str
    price: int


def visit_fee(session: Session, code: str | None, day: date) -> VisitFee | None:
    """Look a visit code up in billing's price list; None when it has no price that day."""
    if not code:
        return None
    from billing import services as billing  # billing's price list, through its service

    try:
        entry = billing.price_on(session, code, day)
    except VetinhError:
        return None
    return VisitFee(code=entry.code, name=entry.name, price=int(entry.price))


def set_visit_code(session: Session, clinic: Clinic, raw: str | None, *, day: date) -> Clinic:
    """Set (or clear, when blank) the clinic's visit fee code; later check-ins charge it.

    Raises ValidationFailed (field ``visit_code``) for a malformed code or one the price
    list does not price on ``day``; nothing changes then.
    """
    code = clean_visit_code(raw)
    if code is not None and visit_fee(session, code, day) is None:
        raise ValidationFailed(
            N_("Some fields are not valid."),
            fields={"visit_code": N_("The price list has no item with this code.")},
        )
    clinic.visit_code = code
    session.flush()
    return clinic


def set_template_video(session: Session, template: WeeklyTemplate, video: bool) -> WeeklyTemplate:
    """Mark a weekly template video (or not); sessions generated from now on follow it."""
    template.video = bool(video)
    session.flush()
    return template


def _require(values: dict[str, str]) -> None:
    missing = {k: N_("This field is required.") for k, v in values.items() if not str(v or "").strip()}
    if missing:
        raise ValidationFailed(N_("Some fields are not valid."), fields=missing)


def number_ranges(numbering: str, online_capacity: int, walkin_capacity: int) -> dict[str, int]:
    """Lay out the online and walk-in numbers of a session for a numbering scheme.

    ``split``: online 1…N, walk-in from N+1. ``alternate``: online odd, walk-in even.
    Raises ValidationFailed for an unknown scheme or a negative capacity.
    """
    if online_capacity < 0 or walkin_capacity < 0:
        raise ValidationFailed(fields={"capacity": N_("A capacity cannot be negative.")})
    if numbering == "split":
        return {
            "online_first": 1,
            "online_step": 1,
            "online_capacity": online_capacity,
            "walkin_first": online_capacity + 1,
            "walkin_step": 1,
            "walkin_capacity": walkin_capacity,
        }
    if numbering == "alternate":
        return {
            "online_first": 1,
            "online_step": 2,
            "online_capacity": online_capacity,
            "walkin_first": 2,
            "walkin_step": 2,
            "walkin_capacity": walkin_capacity,
        }
    raise ValidationFailed(fields={"numbering": N_("Use split or alternate numbering.")})


def local_moment(day: date, at: time, zone: ZoneInfo) -> datetime:
    """Return the UTC moment of a local day and time."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def create_session(
    session: Session,
    clinic: Clinic,
    *,
    day: date,
    part: str,
    starts: time,
    ends: time,
    zone: ZoneInfo,
    doctor_id: int | None = None,
    online_capacity: int | None = None,
    walkin_capacity: int | None = None,
    minutes_per_patient: int | None = None,
    template_id: int | None = None,
    video: bool = False,
) -> ClinicSession:
    """Open a clinic session with its counter, Schedule and Slot; ``video`` for a video session.

    Raises ValidationFailed (bad part, times or capacities) and Conflict when the clinic
    already has a session that day and part.
    """
    if part not in PARTS:
        raise ValidationFailed(fields={"part": N_("Choose morning or afternoon.")})
    if ends <= starts:
        raise ValidationFailed(fields={"ends": N_("The session must end after it starts.")})
    minutes = minutes_per_patient or clinic.minutes_per_patient
    if minutes <= 0:
        raise ValidationFailed(fields={"minutes_per_patient": N_("Give a positive number of minutes.")})
    existing = session.scalar(
        select(ClinicSession.id).where(
            ClinicSession.clinic_id == clinic.id, ClinicSession.day == day, ClinicSession.part == part
        )
    )
    if existing is not None:
        raise Conflict(N_("The clinic already has a session then."), code="SESSION_EXISTS")
    ranges = number_ranges(
        clinic.numbering,
        clinic.online_capacity if online_capacity is None else online_capacity,
        clinic.walkin_capacity if walkin_capacity is None else walkin_capacity,
    )
    starts_at = local_moment(day, starts, zone)
    ends_at = local_moment(day, ends, zone)
    row = ClinicSession(
        clinic_id=clinic.id,
        doctor_id=doctor_id,
        day=day,
        part=part,
        starts_at=starts_at,
        ends_at=ends_at,
        minutes_per_patient=minutes,
        template_id=template_id,
        status="open",
        video=bool(video),
        **ranges,
    )
    session.add(row)
    session.flush()
    session.add(SessionCounter(session_id=row.id, online_issued=0, walkin_issued=0))
    doctor = session.get(User, doctor_id) if doctor_id else None
    department = session.get(Department, clinic.department_id)
    sched = store.create(
        session,
        fhir_mapping.schedule(
            session_id=row.id,
            location_id=clinic.location_id,
            healthcare_service_id=department.healthcare_service_id if department else None,
            clinic_name=clinic.name,
            doctor_name=doctor.full_name if doctor else None,
            starts_at=starts_at,
            ends_at=ends_at,
            part=part,
        ),
    )
    slot = store.create(
        session,
        fhir_mapping.slot(schedule_id=sched.id, starts_at=starts_at, ends_at=ends_at, full=False),
    )
    row.schedule_id = sched.id
    row.slot_id = slot.id
    session.flush()
    return row


def add_weekly_template(
    session: Session,
    clinic: Clinic,
    *,
    weekday: int,
    part: str,
    starts: time,
    ends: time,
    doctor_id: int | None = None,
    online_capacity: int | None = None,
    walkin_capacity: int | None = None,
    minutes_per_patient: int | None = None,
    video: bool = False,
) -> WeeklyTemplate:
    """Add a recurring session (``video`` for a video one) to a clinic's week.

    Raises ValidationFailed for bad values.
    """
    if not 0 <= weekday <= 6:
        raise ValidationFailed(fields={"weekday": N_("Use 0 (Monday) to 6 (Sunday).")})
    if part not in PARTS:
        raise ValidationFailed(fields={"part": N_("Choose morning or afternoon.")})
    if ends <= starts:
        raise ValidationFailed(fields={"ends": N_("The session must end after it starts.")})
    template = WeeklyTemplate(
        clinic_id=clinic.id,
        weekday=weekday,
        part=part,
        starts=starts,
        ends=ends,
        doctor_id=doctor_id,
        online_capacity=online_capacity,
        walkin_capacity=walkin_capacity,
        minutes_per_patient=minutes_per_patient,
        video=bool(video),
        active=True,
    )
    session.add(template)
    session.flush()
    return template


def is_closed(session: Session, clinic: Clinic, day: date, part: str) -> bool:
    """Tell whether a holiday or closure covers this clinic on this day and part."""
    found = session.scalar(
        select(Closure.id).where(
            Closure.site_id == clinic.site_id,
            Closure.day == day,
            (Closure.clinic_id.is_(None)) | (Closure.clinic_id == clinic.id),
            (Closure.part.is_(None)) | (Closure.part == part),
        )
    )
    return found is not None


def generate_sessions(session: Session, *, today: date, days: int, zone: ZoneInfo) -> list[ClinicSession]:
    """Create the sessions the weekly templates call for over the coming days (idempotent).

    Skips days a closure covers and sessions that already exist; raises nothing for those.
    """
    created: list[ClinicSession] = []
    templates = session.scalars(
        select(WeeklyTemplate)
        .join(Clinic, Clinic.id == WeeklyTemplate.clinic_id)
        .where(WeeklyTemplate.active.is_(True), Clinic.active.is_(True))
        .order_by(WeeklyTemplate.id)
    ).all()
    for offset in range(days):
        day = today + timedelta(days=offset)
        for template in templates:
            if template.weekday != day.weekday():
                continue
            clinic = session.get(Clinic, template.clinic_id)
            assert clinic is not None
            exists = session.scalar(
                select(ClinicSession.id).where(
                    ClinicSession.clinic_id == clinic.id,
                    ClinicSession.day == day,
                    ClinicSession.part == template.part,
                )
            )
            if exists is not None or is_closed(session, clinic, day, template.part):
                continue
            created.append(
                create_session(
                    session,
                    clinic,
                    day=day,
                    part=template.part,
                    starts=template.starts,
                    ends=template.ends,
                    zone=zone,
                    doctor_id=template.doctor_id,
                    online_capacity=template.online_capacity,
                    walkin_capacity=template.walkin_capacity,
                    minutes_per_patient=template.minutes_per_patient,
                    template_id=template.id,
                    video=template.video,
                )
            )
    return created


# --- windows and listing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """When online booking of a session opens and closes (UTC)."""

    opens_at: datetime
    closes_at: datetime

    def state(self, now: datetime) -> str:
        if now < self.opens_at:
            return "not_open"
        if now >= self.closes_at:
            return "closed"
        return "open"


def booking_window(clinic: Clinic, clinic_session: ClinicSession, zone: ZoneInfo) -> Window:
    """Compute a session's booking window from its clinic's rules."""
    opens_day = clinic_session.day - timedelta(days=clinic.window_days_before)
    opens_at = local_moment(opens_day, clinic.window_opens_at, zone)
    closes_at = _aware(clinic_session.ends_at) - timedelta(minutes=clinic.window_closes_minutes_before_end)
    return Window(opens_at=opens_at, closes_at=closes_at)


def remaining_online(session: Session, clinic_session: ClinicSession) -> int:
    """Return how many online numbers the session still has."""
    issued = session.scalar(
        select(SessionCounter.online_issued).where(SessionCounter.session_id == clinic_session.id)
    )
    return max(0, clinic_session.online_capacity - int(issued or 0))


def sessions_of_clinic(session: Session, clinic_id: int, day: date) -> list[ClinicSession]:
    """List a clinic's sessions on a day, morning first."""
    return list(
        session.scalars(
            select(ClinicSession)
            .where(ClinicSession.clinic_id == clinic_id, ClinicSession.day == day)
            .order_by(ClinicSession.starts_at)
        )
    )


# Built once: every refusal of a full session runs it, and a rush refuses thousands.
_LATER_SESSIONS_WITH_ROOM = (
    select(ClinicSession.id, ClinicSession.ends_at)
    .join(SessionCounter, SessionCounter.session_id == ClinicSession.id)
    .where(
        ClinicSession.clinic_id == bindparam("clinic_id"),
        ClinicSession.starts_at > bindparam("after"),
        ClinicSession.status == "open",
        SessionCounter.online_issued < ClinicSession.online_capacity,
    )
    .order_by(ClinicSession.starts_at)
    .limit(10)
)


def next_session_with_room(
    session: Session, clinic_session: ClinicSession, zone: ZoneInfo, now: datetime
) -> ClinicSession | None:
    """Find the clinic's next open session, after this one, that still has online numbers."""
    clinic = clinic_session.clinic
    candidates = core_connection(session).execute(
        _LATER_SESSIONS_WITH_ROOM,
        {"clinic_id": clinic_session.clinic_id, "after": clinic_session.starts_at},
    )
    for candidate_id, ends_at in candidates.all():
        # A later session of the same clinic is still bookable (or soon will be) until
        # its window closes, which only its end moves.
        if now < _aware(ends_at) - timedelta(minutes=clinic.window_closes_minutes_before_end):
            return session.get(ClinicSession, candidate_id)
    return None


def session_summary(
    session: Session, clinic_session: ClinicSession, zone: ZoneInfo, now: datetime
) -> dict[str, Any]:
    """Describe a session for the API and pages."""
    window = booking_window(clinic_session.clinic, clinic_session, zone)
    doctor = session.get(User, clinic_session.doctor_id) if clinic_session.doctor_id else None
    return {
        "id": clinic_session.id,
        "clinic_id": clinic_session.clinic_id,
        "date": clinic_session.day.isoformat(),
        "part": clinic_session.part,
        "starts_at": fhir_mapping.instant(_aware(clinic_session.starts_at)),
        "ends_at": fhir_mapping.instant(_aware(clinic_session.ends_at)),
        "doctor": doctor.full_name if doctor else None,
        "status": clinic_session.status,
        "video": clinic_session.video,
        "minutes_per_patient": clinic_session.minutes_per_patient,
        "online_capacity": clinic_session.online_capacity,
        "walkin_capacity": clinic_session.walkin_capacity,
        "remaining_online": remaining_online(session, clinic_session),
        "window": {
            "opens_at": fhir_mapping.instant(window.opens_at),
            "closes_at": fhir_mapping.instant(window.closes_at),
            "state": window.state(now),
        },
    }


# --- booking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookingRequest:
    """What a booking asks for, and who asks (for idempotency and the record)."""

    session_id: int
    patient_id: str
    booked_by: int | None
    idempotency_owner: str | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.session_id}|{self.patient_id}".encode()).hexdigest()


@dataclass(frozen=True)
class BookingResult:
    booking: Booking
    replayed: bool


def _replay(session: Session, request: BookingRequest) -> Booking | None:
    """Return the booking an earlier request with this idempotency key made, if any.

    Raises ValidationFailed when the key was used for a different booking.
    """
    if not request.idempotency_key:
        return None
    found = session.scalar(
        select(Booking).where(
            Booking.idempotency_owner == request.idempotency_owner,
            Booking.idempotency_key == request.idempotency_key,
        )
    )
    if found is not None and found.request_fingerprint != request.fingerprint():
        raise ValidationFailed(
            N_("This Idempotency-Key was already used for a different booking."),
            code="IDEMPOTENCY_KEY_REUSED",
            fields={"Idempotency-Key": N_("Use a new key for a new booking.")},
        )
    return found


def _active_booking(session: Session, session_id: int, patient_id: str) -> Booking | None:
    return session.scalar(
        select(Booking).where(
            Booking.session_id == session_id,
            Booking.patient_id == patient_id,
            Booking.status != "cancelled",
        )
    )


def _already_booked(existing: Booking) -> Conflict:
    return Conflict(
        N_("This patient already has a number in this session."),
        code="ALREADY_BOOKED",
        extra={"booking_id": existing.id, "queue_number": existing.queue_number},
    )


def _numbers_before(clinic_session: ClinicSession, number: int) -> int:
    """Count the numbers of both ranges that come before ``number`` in the session's plan."""

    def below(first: int, step: int, capacity: int) -> int:
        if number <= first or capacity <= 0:
            return 0
        return min(capacity, (number - first - 1) // step + 1)

    return below(
        clinic_session.online_first, clinic_session.online_step, clinic_session.online_capacity
    ) + below(clinic_session.walkin_first, clinic_session.walkin_step, clinic_session.walkin_capacity)


def planned_call_time(clinic_session: ClinicSession, number: int) -> datetime:
    """Estimate, at booking time, when a number will be called: start + its place × minutes."""
    return _aware(clinic_session.starts_at) + timedelta(
        minutes=_numbers_before(clinic_session, number) * clinic_session.minutes_per_patient
    )


def _counter_update(issued: Any) -> Any:
    return (
        update(COUNTER_TABLE)
        .where(COUNTER_TABLE.c.session_id == bindparam("id"), issued < bindparam("capacity"))
        .values({issued: issued + 1})
        .returning(issued)
    )


# Built once: the booking rush runs them thousands of times a minute.
_TAKE_NUMBER = {
    "online": _counter_update(COUNTER_TABLE.c.online_issued),
    "walkin": _counter_update(COUNTER_TABLE.c.walkin_issued),
}


def allocate_queue_number(session: Session, clinic_session: ClinicSession, channel: str) -> int | None:
    """Take the session's next number of a channel by one atomic UPDATE, or None when none are left."""
    if channel == "online":
        capacity, first, step = (
            clinic_session.online_capacity,
            clinic_session.online_first,
            clinic_session.online_step,
        )
    else:
        capacity, first, step = (
            clinic_session.walkin_capacity,
            clinic_session.walkin_first,
            clinic_session.walkin_step,
        )
    issued = (
        core_connection(session)
        .execute(_TAKE_NUMBER[channel], {"id": clinic_session.id, "capacity": capacity})
        .scalar_one_or_none()
    )
    if issued is None:
        return None
    return first + (int(issued) - 1) * step


def _check_bookable(
    clinic_session: ClinicSession | None, zone: ZoneInfo, now: datetime, *, online: bool
) -> ClinicSession:
    if clinic_session is None:
        raise NotFound(N_("There is no such session."), code="SESSION_NOT_FOUND")
    if clinic_session.status != "open":
        raise Conflict(N_("This session was cancelled."), code="SESSION_CANCELLED")
    if now >= _aware(clinic_session.ends_at):
        raise Conflict(N_("This session is over."), code="SESSION_PAST")
    if online:
        window = booking_window(clinic_session.clinic, clinic_session, zone)
        state = window.state(now)
        if state == "not_open":
            raise Conflict(
                N_("Booking for this session has not opened yet."),
                code="WINDOW_NOT_OPEN",
                extra={"opens_at": fhir_mapping.instant(window.opens_at)},
            )
        if state == "closed":
            raise Conflict(
                N_("Booking for this session has closed."),
                code="WINDOW_CLOSED",
                extra={"closed_at": fhir_mapping.instant(window.closes_at)},
            )
    return clinic_session


def book(
    session: Session, request: BookingRequest, *, zone: ZoneInfo, now: datetime | None = None
) -> BookingResult:
    """Give a patient the session's next online number, once per idempotency key.

    Raises NotFound (no session, no patient), Conflict (SESSION_CANCELLED, SESSION_PAST,
    WINDOW_NOT_OPEN, WINDOW_CLOSED, ALREADY_BOOKED), SessionFull (with the next session that
    has room) and ValidationFailed (IDEMPOTENCY_KEY_REUSED).
    """
    now = now or utcnow()
    clinic_session = session.get(ClinicSession, request.session_id)
    # Known before the look at earlier bookings: a session is known full only once every
    # booking that took its numbers has committed, so that look sees this key's booking.
    known_full = clinic_session is not None and _known_full(session, clinic_session)
    earlier, existing = _earlier_bookings(session, request)
    if earlier is not None:
        return BookingResult(earlier, replayed=True)
    clinic_session = _check_bookable(clinic_session, zone, now, online=True)
    if existing is not None:
        raise _already_booked(existing)
    if known_full:
        raise _session_full(session, clinic_session, zone, now)
    _require_patient(session, request.patient_id)
    grant_site_access(request.patient_id, clinic_session.clinic.site_id, reason="booking")
    # Everything is checked: from the counter UPDATE, which locks the session's counter row
    # until the request commits, to the commit there are only writes, so concurrent
    # bookings of the session wait on each other as briefly as possible. A failure rolls
    # the whole transaction back, the number with it.
    number = allocate_queue_number(session, clinic_session, "online")
    if number is None:
        # A concurrent request with the same key may have taken the last number after the
        # first look: then this is its replay.
        earlier, _ = _earlier_bookings(session, request)
        if earlier is not None:
            return BookingResult(earlier, replayed=True)
        raise _session_full(session, clinic_session, zone, now)
    try:
        booking = _new_booking(session, clinic_session, request, number, "online", now)
    except IntegrityError:
        # A concurrent request with the same key, or for the same patient, committed first.
        session.rollback()
        earlier, existing = _earlier_bookings(session, request)
        if earlier is not None:
            return BookingResult(earlier, replayed=True)
        if existing is not None:
            raise _already_booked(existing) from None
        raise
    _after_booking(session, clinic_session, booking)
    events.publish(
        "appointment.booked",
        {
            "booking_id": booking.id,
            "session_id": clinic_session.id,
            "clinic_id": clinic_session.clinic_id,
            "queue_number": booking.queue_number,
        },
    )
    return BookingResult(booking, replayed=False)


_EARLIER_BOOKINGS_QUERY = select(
    Booking.id,
    Booking.idempotency_owner,
    Booking.idempotency_key,
    Booking.request_fingerprint,
    Booking.session_id,
    Booking.patient_id,
    Booking.status,
).where(
    or_(
        and_(
            Booking.idempotency_owner == bindparam("owner"),
            Booking.idempotency_key == bindparam("key"),
        ),
        and_(
            Booking.session_id == bindparam("session_id"),
            Booking.patient_id == bindparam("patient_id"),
            Booking.status != "cancelled",
        ),
    )
)


def _earlier_bookings(session: Session, request: BookingRequest) -> tuple[Booking | None, Booking | None]:
    """Find, in one query, the booking this idempotency key made and the patient's active one.

    Returns (replay, active booking in the session); the replay is None when the key is new.
    Raises ValidationFailed when the key was used for a different booking.
    """
    rows = (
        core_connection(session)
        .execute(
            _EARLIER_BOOKINGS_QUERY,
            {
                # No booking has a null key, so a request without one matches no replay.
                "owner": request.idempotency_owner if request.idempotency_key else None,
                "key": request.idempotency_key,
                "session_id": request.session_id,
                "patient_id": request.patient_id,
            },
        )
        .all()
    )
    replay_id = active_id = None
    for row in rows:
        if request.idempotency_key and (row.idempotency_owner, row.idempotency_key) == (
            request.idempotency_owner,
            request.idempotency_key,
        ):
            if row.request_fingerprint != request.fingerprint():
                raise ValidationFailed(
                    N_("This Idempotency-Key was already used for a different booking."),
                    code="IDEMPOTENCY_KEY_REUSED",
                    fields={"Idempotency-Key": N_("Use a new key for a new booking.")},
                )
            replay_id = row.id
        if (row.session_id, row.patient_id, row.status != "cancelled") == (
            request.session_id,
            request.patient_id,
            True,
        ):
            active_id = row.id
    return (
        session.get(Booking, replay_id) if replay_id is not None else None,
        session.get(Booking, active_id) if active_id is not None else None,
    )


# Sessions whose online numbers are all given out: a counter only goes up, so this process
# may refuse them without asking the database again. The key names the database and the
# session row (its creation time too, so a recreated database's session 1 is another one).
_FULL_SESSIONS: set[tuple[str, int, str, int]] = set()
_FULL_SESSIONS_LIMIT = 10_000


def _full_key(session: Session, clinic_session: ClinicSession) -> tuple[str, int, str, int]:
    return (
        _database_name(session.get_bind().engine),
        clinic_session.id,
        _aware(clinic_session.created_at).isoformat(),
        clinic_session.online_capacity,
    )


def _database_name(engine: Engine) -> str:
    url = engine.url  # its parts, not str(url), which formats the whole URL on every refusal
    return f"{url.drivername}://{url.host or ''}:{url.port or ''}/{url.database or ''}"


def _known_full(session: Session, clinic_session: ClinicSession) -> bool:
    return _full_key(session, clinic_session) in _FULL_SESSIONS


def _session_full(
    session: Session, clinic_session: ClinicSession, zone: ZoneInfo, now: datetime
) -> SessionFull:
    if len(_FULL_SESSIONS) >= _FULL_SESSIONS_LIMIT:
        _FULL_SESSIONS.clear()
    _FULL_SESSIONS.add(_full_key(session, clinic_session))
    following = next_session_with_room(session, clinic_session, zone, now)
    return SessionFull(
        extra={
            "session_id": clinic_session.id,
            "next_session": session_summary(session, following, zone, now) if following else None,
        }
    )


def _require_patient(session: Session, patient_id: str) -> None:
    """Check the patient exists (before any lock is taken).

    Raises NotFound (PATIENT_NOT_FOUND) for an unknown or deleted patient.
    """
    if not store.exists(session, "Patient", patient_id):
        raise NotFound(N_("There is no such patient."), code="PATIENT_NOT_FOUND")


def _prepare_patient(session: Session, patient_id: str, clinic_session: ClinicSession) -> None:
    """Check the patient exists and let the clinic's site see them.

    Raises NotFound (PATIENT_NOT_FOUND) for an unknown or deleted patient.
    """
    _require_patient(session, patient_id)
    grant_site_access(patient_id, clinic_session.clinic.site_id, reason="booking")


# Built once, like the counter UPDATE: one INSERT … RETURNING per booking.
_INSERT_BOOKING = BOOKING_TABLE.insert().returning(BOOKING_TABLE.c.id)


def _new_booking(
    session: Session,
    clinic_session: ClinicSession,
    request: BookingRequest,
    number: int,
    channel: str,
    now: datetime,
) -> Booking:
    """Write the booking row and return it as a persistent Booking of this session.

    The row names its Appointment's id before the Appointment is written (``_after_booking``),
    so it needs no UPDATE afterwards.

    The row goes by one Core ``INSERT … RETURNING id`` with every column given, and the
    object is then attached as if loaded: the unit of work's flush of a new object took
    1.2 ms of CPU per booking in-process, this 0.4-0.6 ms. Changes made to the returned
    Booking later (a walk-in's encounter) are flushed as usual.
    Raises IntegrityError when the patient already holds a number here, or the
    idempotency key was used, by a request that committed first.
    """
    walk_in = channel == "walkin"
    values: dict[str, Any] = {
        "session_id": clinic_session.id,
        "patient_id": request.patient_id,
        "channel": channel,
        "queue_number": number,
        "status": "arrived" if walk_in else "booked",
        "sort_key": number * SORT_SPACING,
        "skip_count": 0,
        "idempotency_owner": request.idempotency_owner if request.idempotency_key else None,
        "idempotency_key": request.idempotency_key,
        "request_fingerprint": request.fingerprint(),
        "booked_by": request.booked_by,
        "estimated_call_at": planned_call_time(clinic_session, number),
        "appointment_id": store.new_id(),
        "encounter_id": None,
        "created_at": now,
        "cancelled_at": None,
        "checked_in_at": now if walk_in else None,
        "called_at": None,
        "done_at": None,
        "satisfaction": None,
        "survey_response_id": None,
    }
    booking_id = core_connection(session).execute(_INSERT_BOOKING, values).scalar_one()
    booking = Booking(id=booking_id, **values)
    booking.session = clinic_session  # already loaded: no query to find it again
    make_transient_to_detached(booking)
    session.add(booking)
    return booking


def _after_booking(session: Session, clinic_session: ClinicSession, booking: Booking) -> None:
    """Write the Appointment, and mark the Slot busy when the last online number went.

    Its references (the patient, the clinic's Location, the session's Slot) were checked or
    written before, so the store does not look them up again while the counter is locked.
    """
    clinic = clinic_session.clinic
    store.create(
        session,
        fhir_mapping.appointment(
            booking_id=booking.id,
            queue_number=booking.queue_number,
            status="booked" if booking.channel == "online" else "arrived",
            patient_id=booking.patient_id,
            slot_id=clinic_session.slot_id,
            location_id=clinic.location_id,
            clinic_name=clinic.name,
            estimated_call_at=_aware(booking.estimated_call_at),
            minutes_per_patient=clinic_session.minutes_per_patient,
            created_at=_aware(booking.created_at),
            channel=booking.channel,
            video=clinic_session.video,
        ),
        check_references=False,
        resource_id=booking.appointment_id,
    )
    last_online = (
        clinic_session.online_first + (clinic_session.online_capacity - 1) * clinic_session.online_step
    )
    if booking.channel == "online" and clinic_session.slot_id and booking.queue_number == last_online:
        store.update(
            session,
            "Slot",
            clinic_session.slot_id,
            {
                "id": clinic_session.slot_id,
                **fhir_mapping.slot(
                    schedule_id=clinic_session.schedule_id or "",
                    starts_at=_aware(clinic_session.starts_at),
                    ends_at=_aware(clinic_session.ends_at),
                    full=True,
                ),
            },
            check_references=False,
        )
    session.flush()


def _set_appointment_status(session: Session, booking: Booking, status: str) -> None:
    if not booking.appointment_id:
        return
    resource = store.read(session, "Appointment", booking.appointment_id).resource
    resource["status"] = status
    if status == "cancelled":
        resource["cancelationReason"] = {"text": "cancelled by the patient or the desk"}
    store.update(session, "Appointment", booking.appointment_id, resource)


def cancel_booking(session: Session, booking: Booking, *, now: datetime | None = None) -> Booking:
    """Cancel a booking before the clinic's cutoff; its number is never given out again.

    Raises Conflict (NOT_CANCELLABLE once checked in or over, CANCEL_CUTOFF_PASSED).
    """
    now = now or utcnow()
    if booking.status == "cancelled":
        return booking
    if booking.status != "booked":
        raise Conflict(N_("This booking can no longer be cancelled."), code="NOT_CANCELLABLE")
    clinic_session = booking.session
    cutoff = _aware(clinic_session.starts_at) - timedelta(
        minutes=clinic_session.clinic.cancel_minutes_before_start
    )
    if now >= cutoff:
        raise Conflict(
            N_("It is too late to cancel this booking."),
            code="CANCEL_CUTOFF_PASSED",
            extra={"cutoff": fhir_mapping.instant(cutoff)},
        )
    booking.status = "cancelled"
    booking.cancelled_at = now
    _set_appointment_status(session, booking, "cancelled")
    session.flush()
    events.publish(
        "appointment.cancelled",
        {"booking_id": booking.id, "session_id": booking.session_id, "queue_number": booking.queue_number},
    )
    return booking


def reschedule_booking(
    session: Session,
    booking: Booking,
    request: BookingRequest,
    *,
    zone: ZoneInfo,
    now: datetime | None = None,
) -> BookingResult:
    """Book the new session, then cancel the old booking, in one unit of work.

    Raises what :func:`book` and :func:`cancel_booking` raise; nothing changes on failure.
    """
    now = now or utcnow()
    if request.session_id == booking.session_id:
        raise Conflict(N_("This patient already has a number in this session."), code="ALREADY_BOOKED")
    result = book(session, request, zone=zone, now=now)
    if not result.replayed:
        cancel_booking(session, booking, now=now)
    return result


def find_booking(session: Session, booking_id: int) -> Booking:
    """Return a booking. Raises NotFound."""
    booking = session.get(Booking, booking_id)
    if booking is None:
        raise NotFound(N_("There is no such booking."), code="BOOKING_NOT_FOUND")
    return booking


# --- check-in codes ---------------------------------------------------------------------------

_CODE_RE = re.compile(r"^VT(\d{1,12})-([A-Z2-7]{12})$")


def _signature(secret: str, booking_id: int) -> str:
    digest = hmac.new(secret.encode(), f"booking-checkin:{booking_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:12]


def checkin_code(secret: str, booking_id: int) -> str:
    """Sign a booking's id into the code its QR carries (short enough to type)."""
    return f"VT{booking_id}-{_signature(secret, booking_id)}"


def read_checkin_code(secret: str, code: str) -> int:
    """Return the booking id a check-in code names.

    Raises BadRequest (CHECKIN_CODE_INVALID) for a code this hospital did not sign.
    """
    normalised = re.sub(r"\s+", "", code or "").upper()
    match = _CODE_RE.match(normalised)
    if match is None or not hmac.compare_digest(match.group(2), _signature(secret, int(match.group(1)))):
        raise BadRequest(
            N_("This check-in code is not valid: it was not issued by this hospital or was mistyped."),
            code="CHECKIN_CODE_INVALID",
            fields={"code": N_("Check the code on the patient's booking.")},
        )
    return int(match.group(1))


# --- the day of the visit -------------------------------------------------------------------------


def _open_encounter(session: Session, booking: Booking, now: datetime) -> None:
    clinic = booking.session.clinic
    site = session.get(Site, clinic.site_id)
    stored = store.create(
        session,
        fhir_mapping.encounter(
            status="arrived",
            patient_id=booking.patient_id,
            appointment_id=booking.appointment_id,
            location_id=clinic.location_id,
            organization_id=site.organization_id if site else None,
            arrived_at=now,
        ),
    )
    booking.encounter_id = stored.id


def _set_encounter_status(session: Session, booking: Booking, status: str, now: datetime) -> None:
    if not booking.encounter_id:
        return
    resource = store.read(session, "Encounter", booking.encounter_id).resource
    # A finished Encounter may be signed: rewriting it would leave a newer, unsigned version.
    if resource.get("status") in (status, "finished", "cancelled", "entered-in-error"):
        return
    resource["status"] = status
    if status == "finished":
        resource.setdefault("period", {})["end"] = fhir_mapping.instant(now)
    store.update(session, "Encounter", booking.encounter_id, resource)


def check_in(
    session: Session, booking: Booking, *, site_id: int | None, zone: ZoneInfo, now: datetime | None = None
) -> tuple[Booking, bool]:
    """Mark a booked patient arrived and open the Encounter; return (booking, newly checked in).

    Raises NotFound (another site's booking), Conflict (CHECKIN_WRONG_DAY, BOOKING_CANCELLED,
    SESSION_PAST).
    """
    now = now or utcnow()
    clinic_session = booking.session
    if site_id is not None and clinic_session.clinic.site_id != site_id:
        raise NotFound(N_("There is no such booking."), code="BOOKING_NOT_FOUND")
    if booking.status == "cancelled":
        raise Conflict(N_("This booking was cancelled."), code="BOOKING_CANCELLED")
    if booking.status in ("arrived", "called", "done"):
        return booking, False
    if booking.status in ("no_show", "missed") or now >= _aware(clinic_session.ends_at):
        raise Conflict(N_("This session is over."), code="SESSION_PAST")
    today = now.astimezone(zone).date()
    if clinic_session.day != today:
        raise Conflict(
            N_("This booking is for another day."),
            code="CHECKIN_WRONG_DAY",
            extra={"date": clinic_session.day.isoformat()},
        )
    booking.status = "arrived"
    booking.checked_in_at = now
    _set_appointment_status(session, booking, "arrived")
    _open_encounter(session, booking, now)
    session.flush()
    events.publish("queue.checked_in", _queue_event(booking))
    _announce_encounter(booking, now)
    return booking, True


def register_walk_in(
    session: Session,
    request: BookingRequest,
    *,
    zone: ZoneInfo,
    now: datetime | None = None,
) -> BookingResult:
    """Give a patient at the desk the session's next walk-in number, already checked in.

    Raises NotFound, Conflict (SESSION_CANCELLED, SESSION_PAST, ALREADY_BOOKED, WALKIN_FULL).
    """
    now = now or utcnow()
    earlier = _replay(session, request)
    if earlier is not None:
        return BookingResult(earlier, replayed=True)
    clinic_session = _check_bookable(session.get(ClinicSession, request.session_id), zone, now, online=False)
    existing = _active_booking(session, clinic_session.id, request.patient_id)
    if existing is not None:
        raise _already_booked(existing)
    _prepare_patient(session, request.patient_id, clinic_session)
    number = allocate_queue_number(session, clinic_session, "walkin")
    if number is None:
        raise Conflict(N_("This session has no walk-in numbers left."), code="WALKIN_FULL")
    booking = _new_booking(session, clinic_session, request, number, "walkin", now)
    _after_booking(session, clinic_session, booking)
    _open_encounter(session, booking, now)
    session.flush()
    events.publish("queue.checked_in", _queue_event(booking))
    _announce_encounter(booking, now)
    return BookingResult(booking, replayed=False)


def _announce_encounter(booking: Booking, now: datetime) -> None:
    """Publish ``encounter.checked_in`` (billing charges the clinic's visit fee) once it commits.

    A clinic without a visit code publishes nothing: its visits are not charged, and a
    warning says so.
    """
    clinic = booking.session.clinic
    if not booking.encounter_id:
        return
    if not clinic.visit_code:
        log.warning(
            "Clinic %s (%s) has no visit code: no visit fee is charged for Encounter %s",
            clinic.id,
            clinic.name,
            booking.encounter_id,
        )
        return
    events.publish(
        "encounter.checked_in",
        {
            "encounter_id": booking.encounter_id,
            "patient_id": booking.patient_id,
            "visit_code": clinic.visit_code,
            "checked_in_at": fhir_mapping.instant(now),
        },
    )


def _queue_event(booking: Booking, **more: Any) -> dict[str, Any]:
    clinic = booking.session.clinic
    return {
        "site": clinic.site.code,
        "session_id": booking.session_id,
        "clinic_id": clinic.id,
        "clinic": clinic.name,
        "room": clinic.room,
        "queue_number": booking.queue_number,
        **more,
    }


def _log_call(session: Session, booking: Booking, action: str, by_user_id: int | None, now: datetime) -> None:
    session.add(
        QueueCall(
            session_id=booking.session_id, booking_id=booking.id, action=action, by_user_id=by_user_id, at=now
        )
    )


def current_call(session: Session, session_id: int) -> Booking | None:
    """Return the number the doctor is serving now, if any."""
    return session.scalar(
        select(Booking)
        .where(Booking.session_id == session_id, Booking.status == "called")
        .order_by(Booking.called_at.desc())
        .limit(1)
    )


def waiting(session: Session, session_id: int, *, arrived_only: bool = True) -> list[Booking]:
    """List the session's waiting numbers in the order they will be called."""
    statuses = ("arrived",) if arrived_only else ("booked", "arrived")
    return list(
        session.scalars(
            select(Booking)
            .where(Booking.session_id == session_id, Booking.status.in_(statuses))
            .order_by(Booking.sort_key, Booking.queue_number)
        )
    )


def _lock_queue(session: Session, session_id: int) -> None:
    """Serialise console actions on one session (the counter row's lock; SQLite holds its write lock)."""
    session.execute(
        update(COUNTER_TABLE)
        .where(COUNTER_TABLE.c.session_id == session_id)
        .values(session_id=COUNTER_TABLE.c.session_id)
    )


def _finish(session: Session, booking: Booking, by_user_id: int | None, now: datetime) -> None:
    booking.status = "done"
    booking.done_at = now
    _log_call(session, booking, "done", by_user_id, now)
    _set_appointment_status(session, booking, "fulfilled")
    _set_encounter_status(session, booking, "finished", now)
    events.publish("queue.done", _queue_event(booking))


def call_next(
    session: Session, clinic_session: ClinicSession, *, by_user_id: int | None, now: datetime | None = None
) -> Booking:
    """Finish the number being served and call the next checked-in one.

    Raises Conflict (QUEUE_EMPTY) when nobody checked in is waiting.
    """
    now = now or utcnow()
    _lock_queue(session, clinic_session.id)
    queue = waiting(session, clinic_session.id)
    if not queue:
        raise Conflict(N_("Nobody checked in is waiting in this session."), code="QUEUE_EMPTY")
    serving = current_call(session, clinic_session.id)
    if serving is not None:
        _finish(session, serving, by_user_id, now)
    chosen = queue[0]
    chosen.status = "called"
    chosen.called_at = now
    _log_call(session, chosen, "call", by_user_id, now)
    _set_encounter_status(session, chosen, "in-progress", now)
    session.flush()
    events.publish("queue.called", _queue_event(chosen, recall=False))
    return chosen


def recall(
    session: Session, clinic_session: ClinicSession, *, by_user_id: int | None, now: datetime | None = None
) -> Booking:
    """Announce the number being served again. Raises Conflict (NOTHING_CALLED)."""
    now = now or utcnow()
    serving = current_call(session, clinic_session.id)
    if serving is None:
        raise Conflict(N_("No number is being served."), code="NOTHING_CALLED")
    _log_call(session, serving, "recall", by_user_id, now)
    session.flush()
    events.publish("queue.called", _queue_event(serving, recall=True))
    return serving


def skip(
    session: Session, clinic_session: ClinicSession, *, by_user_id: int | None, now: datetime | None = None
) -> Booking:
    """Send the called number (who did not come in) back N places, or out after too many skips.

    Raises Conflict (NOTHING_CALLED).
    """
    now = now or utcnow()
    _lock_queue(session, clinic_session.id)
    serving = current_call(session, clinic_session.id)
    if serving is None:
        raise Conflict(N_("No number is being served."), code="NOTHING_CALLED")
    clinic = clinic_session.clinic
    serving.skip_count += 1
    _log_call(session, serving, "skip", by_user_id, now)
    if serving.skip_count > clinic.max_skips:
        serving.status = "missed"
        _set_appointment_status(session, serving, "noshow")
        _set_encounter_status(session, serving, "cancelled", now)
    else:
        queue = waiting(session, clinic_session.id)
        serving.status = "arrived"
        serving.called_at = None
        places = max(0, clinic.skip_back_places)
        if queue and places:
            anchor = queue[min(places, len(queue)) - 1]
            after = queue[min(places, len(queue))] if places < len(queue) else None
            # Between the N-th waiting number and the one after it; ties go by queue number.
            serving.sort_key = (
                (anchor.sort_key + after.sort_key) // 2 if after else anchor.sort_key + SORT_SPACING
            )
        _set_encounter_status(session, serving, "arrived", now)
    session.flush()
    events.publish("queue.skipped", _queue_event(serving, status=serving.status))
    return serving


def mark_done(
    session: Session, clinic_session: ClinicSession, *, by_user_id: int | None, now: datetime | None = None
) -> Booking:
    """Finish the number being served. Raises Conflict (NOTHING_CALLED)."""
    now = now or utcnow()
    serving = current_call(session, clinic_session.id)
    if serving is None:
        raise Conflict(N_("No number is being served."), code="NOTHING_CALLED")
    _finish(session, serving, by_user_id, now)
    session.flush()
    return serving


# --- estimates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePosition:
    """Where a booking stands: how many numbers before it and when it should be called."""

    ahead: int
    estimated_call_at: datetime | None
    serving: int | None


def observed_minutes(session: Session, clinic_session: ClinicSession) -> float:
    """Return the session's observed minutes per patient, or its planned minutes before any is done."""
    rows = session.execute(
        select(Booking.called_at, Booking.done_at).where(
            Booking.session_id == clinic_session.id, Booking.status == "done", Booking.called_at.is_not(None)
        )
    ).all()
    durations = [
        (_aware(done) - _aware(called)).total_seconds() / 60 for called, done in rows if called and done
    ]
    if not durations:
        return float(clinic_session.minutes_per_patient)
    return max(0.5, sum(durations) / len(durations))


def no_show_rate(session: Session, clinic_session: ClinicSession) -> float:
    """Return the share of numbers whose turn passed without them (missed or no-show) so far."""
    counts = dict(
        session.execute(
            select(Booking.status, func.count())
            .where(
                Booking.session_id == clinic_session.id,
                Booking.status.in_(("done", "called", "missed", "no_show")),
            )
            .group_by(Booking.status)
        ).all()
    )
    gone = counts.get("missed", 0) + counts.get("no_show", 0)
    total = gone + counts.get("done", 0) + counts.get("called", 0)
    return gone / total if total else 0.0


def queue_position(session: Session, booking: Booking, now: datetime | None = None) -> QueuePosition:
    """Recompute a booking's place and estimated call time from what the session has seen so far."""
    now = now or utcnow()
    clinic_session = booking.session
    serving = current_call(session, clinic_session.id)
    serving_number = serving.queue_number if serving else None
    if booking.status not in ("booked", "arrived"):
        return QueuePosition(0, None, serving_number)
    ahead = int(
        session.scalar(
            select(func.count())
            .select_from(Booking)
            .where(
                Booking.session_id == clinic_session.id,
                Booking.status.in_(("booked", "arrived")),
                (Booking.sort_key < booking.sort_key)
                | ((Booking.sort_key == booking.sort_key) & (Booking.queue_number < booking.queue_number)),
            )
        )
        or 0
    )
    minutes = observed_minutes(session, clinic_session)
    expected_ahead = ahead * (1.0 - no_show_rate(session, clinic_session)) + (1 if serving else 0)
    base = max(now, _aware(clinic_session.starts_at))
    return QueuePosition(ahead, base + timedelta(minutes=expected_ahead * minutes), serving_number)


def video_link(appointment_id: str) -> str:
    """Return the path where a video visit is joined (served by the telehealth context)."""
    return f"/telehealth/appointments/{appointment_id}"


@dataclass(frozen=True)
class VideoVisit:
    """A booking in a video session, as the telehealth context needs it to open the call."""

    booking_id: int
    appointment_id: str  # FHIR Appointment id
    patient_id: str  # FHIR Patient id
    doctor_user_id: int | None  # the session's doctor
    site_id: int
    clinic_name: str
    planned_start: datetime  # aware UTC: the booking's estimated call time
    duration_minutes: int  # the session's minutes per patient
    status: str  # the booking's status (booked, arrived, called, done, cancelled, no_show, ...)


def video_visit(session: Session, appointment_id: str) -> VideoVisit | None:
    """Return the video visit booked as this Appointment; None when there is none or it is not video."""
    booking = session.scalar(select(Booking).where(Booking.appointment_id == str(appointment_id)).limit(1))
    if booking is None or not booking.session.video or not booking.appointment_id:
        return None
    clinic_session = booking.session
    return VideoVisit(
        booking_id=booking.id,
        appointment_id=booking.appointment_id,
        patient_id=booking.patient_id,
        doctor_user_id=clinic_session.doctor_id,
        site_id=clinic_session.clinic.site_id,
        clinic_name=clinic_session.clinic.name,
        planned_start=_aware(booking.estimated_call_at),
        duration_minutes=clinic_session.minutes_per_patient,
        status=booking.status,
    )


def booking_view(
    session: Session, booking: Booking, *, secret: str, now: datetime | None = None, live: bool = True
) -> dict[str, Any]:
    """Describe a booking for its owner: number, times, live position, check-in code or video link.

    A video visit has no check-in code (nobody comes to the desk) but the link to join the call.

    ``live=False`` (a booking just made) skips the position queries and gives the planned time.
    """
    clinic_session = booking.session
    clinic = clinic_session.clinic
    position = (
        queue_position(session, booking, now)
        if live
        else QueuePosition(_numbers_before(clinic_session, booking.queue_number), None, None)
    )
    estimate = position.estimated_call_at or _aware(booking.estimated_call_at)
    return {
        "id": booking.id,
        "status": booking.status,
        "channel": booking.channel,
        "queue_number": booking.queue_number,
        "estimated_call_time": fhir_mapping.instant(estimate),
        "planned_call_time": fhir_mapping.instant(_aware(booking.estimated_call_at)),
        "ahead": position.ahead,
        "now_serving": position.serving,
        "checkin_code": (
            checkin_code(secret, booking.id)
            if booking.status in ACTIVE_STATUSES and not clinic_session.video
            else None
        ),
        "video": clinic_session.video,
        "video_link": (
            video_link(booking.appointment_id) if clinic_session.video and booking.appointment_id else None
        ),
        "patient_id": booking.patient_id,
        "session": {
            "id": clinic_session.id,
            "date": clinic_session.day.isoformat(),
            "part": clinic_session.part,
            "starts_at": fhir_mapping.instant(_aware(clinic_session.starts_at)),
        },
        "clinic": {"id": clinic.id, "name": clinic.name, "room": clinic.room},
        "appointment": f"/fhir/R4/Appointment/{booking.appointment_id}" if booking.appointment_id else None,
        "encounter": f"/fhir/R4/Encounter/{booking.encounter_id}" if booking.encounter_id else None,
        "created_at": fhir_mapping.instant(_aware(booking.created_at)),
    }


# --- jobs' work ---------------------------------------------------------------------------------


def release_no_shows(session: Session, *, now: datetime | None = None) -> int:
    """Mark bookings never checked in as no-shows once their session (plus grace) is over."""
    now = now or utcnow()
    rows = session.scalars(
        select(Booking)
        .join(ClinicSession, ClinicSession.id == Booking.session_id)
        .where(Booking.status == "booked", ClinicSession.ends_at <= now)
    ).all()
    released = 0
    for booking in rows:
        grace = timedelta(minutes=booking.session.clinic.no_show_minutes_after_end)
        if now < _aware(booking.session.ends_at) + grace:
            continue
        booking.status = "no_show"
        _set_appointment_status(session, booking, "noshow")
        released += 1
    session.flush()
    return released


# --- satisfaction and reports -------------------------------------------------------------------


def ensure_questionnaire(session: Session) -> str:
    """Store the satisfaction Questionnaire once; return its id."""
    stored = store.create(
        session,
        fhir_mapping.satisfaction_questionnaire(),
        if_none_exist=f"url={fhir_mapping.SATISFACTION_QUESTIONNAIRE_URL}",
    )
    return stored.id


def submit_survey(
    session: Session,
    booking: Booking,
    *,
    overall: int,
    waiting_ok: bool | None,
    comment: str,
    now: datetime | None = None,
) -> str:
    """Record a patient's after-visit answers as a QuestionnaireResponse; return its id.

    Raises ValidationFailed (score outside 1–5, comment too long) and Conflict (SURVEY_NOT_OPEN
    before the visit is done, SURVEY_DONE when already answered).
    """
    now = now or utcnow()
    errors: dict[str, str] = {}
    if not 1 <= overall <= 5:
        errors["overall"] = N_("Choose a score from 1 to 5.")
    if len(comment) > 2000:
        errors["comment"] = N_("Keep the comment under 2000 characters.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    if booking.status != "done":
        raise Conflict(N_("The survey opens after the visit."), code="SURVEY_NOT_OPEN")
    if booking.survey_response_id:
        raise Conflict(N_("You already answered the survey for this visit."), code="SURVEY_DONE")
    ensure_questionnaire(session)
    stored = store.create(
        session,
        fhir_mapping.satisfaction_response(
            patient_id=booking.patient_id,
            encounter_id=booking.encounter_id,
            authored=now,
            overall=overall,
            waiting_ok=waiting_ok,
            comment=comment.strip(),
        ),
    )
    booking.survey_response_id = stored.id
    booking.satisfaction = overall
    session.flush()
    return stored.id


@dataclass(frozen=True)
class ClinicDayFigures:
    """What a manager sees for one clinic on one day."""

    clinic: str
    booked: int
    seen: int
    no_shows: int
    wait_minutes: float | None
    service_minutes: float | None
    satisfaction: float | None
    answers: int


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def clinic_day_report(session: Session, site_id: int, day: date) -> list[ClinicDayFigures]:
    """Sum up a site's clinics on a day: numbers, no-shows, waiting (check-in → call) and service times, satisfaction."""
    rows = session.execute(
        select(Clinic.name, Booking)
        .join(ClinicSession, ClinicSession.id == Booking.session_id)
        .join(Clinic, Clinic.id == ClinicSession.clinic_id)
        .where(Clinic.site_id == site_id, ClinicSession.day == day, Booking.status != "cancelled")
        .order_by(Clinic.name)
    ).all()
    by_clinic: dict[str, list[Booking]] = {}
    for name, booking in rows:
        by_clinic.setdefault(name, []).append(booking)
    report = []
    for name, bookings in by_clinic.items():
        waits = [
            (_aware(b.called_at) - _aware(b.checked_in_at)).total_seconds() / 60
            for b in bookings
            if b.called_at and b.checked_in_at
        ]
        services_ = [
            (_aware(b.done_at) - _aware(b.called_at)).total_seconds() / 60
            for b in bookings
            if b.done_at and b.called_at
        ]
        scores = [float(b.satisfaction) for b in bookings if b.satisfaction]
        report.append(
            ClinicDayFigures(
                clinic=name,
                booked=len(bookings),
                seen=sum(1 for b in bookings if b.status == "done"),
                no_shows=sum(1 for b in bookings if b.status in ("no_show", "missed")),
                wait_minutes=_mean(waits),
                service_minutes=_mean(services_),
                satisfaction=_mean(scores),
                answers=len(scores),
            )
        )
    return report
