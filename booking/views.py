"""HTTP entry points of the booking context: the pages, and (in ``booking.api``) the JSON API."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import segno
from flask import Response, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from booking import api, services
from booking import demo as _demo  # noqa: F401 - registers the demo loader
from booking import jobs as _jobs  # noqa: F401 - registers the jobs
from booking.blueprint import bp
from booking.models import Booking, Clinic, ClinicSession, WeeklyTemplate
from his import audit, events
from his.db import as_utc, get_session, utcnow
from his.errors import NotFound, ValidationFailed, VetinhError
from his.models import Site
from his.navigation import add_nav_item
from his.patients import PatientDetails, create_patient, patient_summary
from his.policy import linked_patient_ids
from his.security import current_principal, login_required, roles_required

__all__ = ["bp"]

add_nav_item("booking.my_bookings", _l("My bookings"), {"patient"}, icon="ticket", order=20)
add_nav_item("booking.book", _l("Book a visit"), {"patient"}, icon="calendar", order=21)
add_nav_item("booking.desk", _l("Reception desk"), {"receptionist", "nurse"}, icon="desk", order=20)
add_nav_item("booking.console_list", _l("Doctor's console"), {"doctor", "nurse"}, icon="queue", order=21)
add_nav_item("booking.reports", _l("Clinic report"), {"manager"}, icon="chart", order=30)
add_nav_item("booking.clinics", _l("Clinic settings"), {"manager"}, icon="settings", order=31)
add_nav_item(
    "booking.board_index",
    _l("Queue board"),
    {"receptionist", "nurse", "doctor", "manager"},
    icon="tv",
    order=22,
)

PART_LABELS = {"morning": _l("Morning"), "afternoon": _l("Afternoon")}
STATUS_LABELS = {
    "booked": _l("Booked"),
    "arrived": _l("Checked in"),
    "called": _l("Called"),
    "done": _l("Seen"),
    "cancelled": _l("Cancelled"),
    "no_show": _l("Did not come"),
    "missed": _l("Missed the call"),
}


@bp.app_template_filter("booking_time")
def format_time(value: str | datetime | None) -> str:
    """Show a moment (an ISO instant or a datetime) as hours and minutes in the hospital's zone."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return as_utc(moment).astimezone(api.zone()).strftime("%H:%M")


@bp.context_processor
def _labels() -> dict[str, Any]:
    return {"part_labels": PART_LABELS, "status_labels": STATUS_LABELS}


def qr_svg(text: str) -> Markup:
    """Draw a QR code as inline SVG."""
    return Markup(segno.make(text, error="m").svg_inline(scale=5, border=2, dark="#111"))  # noqa: S704 - segno's own SVG


def _today() -> date:
    return datetime.now(api.zone()).date()


def _patient_name(patient_id: str) -> str:
    try:
        return str(patient_summary(get_session(), patient_id)["full_name"])
    except VetinhError:
        return patient_id


def _back(endpoint: str, **values: Any) -> BaseResponse:
    return redirect(url_for(endpoint, **values))


# --- patients ---------------------------------------------------------------------------------


@bp.get("/booking/")
@roles_required("patient")
def my_bookings() -> str:
    """List the bookings of the patient and of the children linked to their account."""
    principal = current_principal()
    ids = linked_patient_ids(principal)
    session = get_session()
    rows = session.scalars(
        select(Booking)
        .join(ClinicSession, ClinicSession.id == Booking.session_id)
        .where(Booking.patient_id.in_(ids), ClinicSession.day >= _today() - timedelta(days=30))
        .order_by(ClinicSession.day.desc(), Booking.id.desc())
    ).all()
    names = {pid: _patient_name(pid) for pid in ids}
    return render_template("booking/my_bookings.html", bookings=rows, names=names)


@bp.get("/booking/book")
@roles_required("patient")
def book() -> str:
    """Pick a clinic, a day and a session."""
    principal = current_principal()
    session = get_session()
    clinics = session.scalars(
        select(Clinic).where(Clinic.active.is_(True)).order_by(Clinic.site_id, Clinic.name)
    ).all()
    clinic_id = request.args.get("clinic", type=int)
    try:
        day = date.fromisoformat(request.args.get("date", "")) if request.args.get("date") else _today()
    except ValueError:
        day = _today()
    sessions: list[dict[str, Any]] = []
    if clinic_id:
        now = utcnow()
        sessions = [
            services.session_summary(session, s, api.zone(), now)
            for s in services.sessions_of_clinic(session, clinic_id, day)
        ]
    patients = sorted(linked_patient_ids(principal), key=lambda pid: pid != principal.patient_id)
    return render_template(
        "booking/book.html",
        clinics=clinics,
        clinic_id=clinic_id,
        day=day,
        sessions=sessions,
        patients=[(pid, _patient_name(pid)) for pid in patients],
        idempotency_key=uuid.uuid4().hex,
    )


@bp.post("/booking/book")
@roles_required("patient")
def book_submit() -> BaseResponse:
    """Book the chosen session; a double-clicked submit carries the same key and books once."""
    principal = current_principal()
    form = request.form
    try:
        session_id = int(form.get("session_id", ""))
    except ValueError:
        flash(_("Choose a session."), "error")
        return _back("booking.book")
    patient_id = form.get("patient_id") or principal.patient_id or ""
    if patient_id not in linked_patient_ids(principal):
        flash(_("You may book only for yourself or a child linked to your account."), "error")
        return _back("booking.book")
    try:
        result = services.book(
            get_session(),
            services.BookingRequest(
                session_id=session_id,
                patient_id=patient_id,
                booked_by=principal.user_id,
                idempotency_owner=api.idempotency_owner(principal),
                idempotency_key=(form.get("idempotency_key") or uuid.uuid4().hex)[:200],
            ),
            zone=api.zone(),
        )
    except VetinhError as exc:
        flash(_(exc.message), "error")
        return _back("booking.book", clinic=form.get("clinic_id"), date=form.get("date"))
    booking = result.booking
    if not result.replayed:
        audit.record("create", "Appointment", booking.appointment_id, patient_id=patient_id)
    return _back("booking.booking_page", booking_id=booking.id)


@bp.get("/booking/bookings/<int:booking_id>")
@login_required
def booking_page(booking_id: int) -> str:
    """Show a booking: the number, the estimated time, the live position and the check-in QR."""
    booking = api.visible_booking(current_principal(), booking_id)
    view = services.booking_view(get_session(), booking, secret=api.signing_secret())
    audit.record("read", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return render_template(
        "booking/booking.html",
        booking=booking,
        view=view,
        patient_name=_patient_name(booking.patient_id),
        qr=qr_svg(view["checkin_code"]) if view["checkin_code"] else None,
    )


@bp.post("/booking/bookings/<int:booking_id>/cancel")
@login_required
def cancel(booking_id: int) -> BaseResponse:
    """Cancel a booking from its page."""
    booking = api.visible_booking(current_principal(), booking_id)
    try:
        services.cancel_booking(get_session(), booking)
    except VetinhError as exc:
        flash(_(exc.message), "error")
    else:
        audit.record("cancel", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
        flash(_("The booking was cancelled."), "success")
    return _back("booking.booking_page", booking_id=booking_id)


@bp.post("/booking/bookings/<int:booking_id>/survey")
@roles_required("patient")
def survey(booking_id: int) -> BaseResponse:
    """Record the patient's answers to the after-visit survey."""
    booking = api.visible_booking(current_principal(), booking_id)
    form = request.form
    waiting = form.get("waiting")
    try:
        services.submit_survey(
            get_session(),
            booking,
            overall=int(form.get("overall") or 0),
            waiting_ok=None if waiting is None else waiting == "yes",
            comment=form.get("comment", ""),
        )
    except VetinhError as exc:
        flash(_(exc.message), "error")
    else:
        audit.record(
            "create", "QuestionnaireResponse", booking.survey_response_id, patient_id=booking.patient_id
        )
        flash(_("Thank you for your answers."), "success")
    return _back("booking.booking_page", booking_id=booking_id)


@bp.get("/booking/reports")
@roles_required("manager")
def reports() -> str:
    """Show a manager the day per clinic: numbers, no-shows, waiting and service times, satisfaction."""
    principal = current_principal()
    try:
        day = date.fromisoformat(request.args.get("date", "")) if request.args.get("date") else _today()
    except ValueError:
        day = _today()
    rows = services.clinic_day_report(get_session(), principal.site_id or 0, day)
    longest = max([r.wait_minutes or 0 for r in rows] + [r.service_minutes or 0 for r in rows] + [1.0])
    return render_template("booking/reports.html", rows=rows, day=day, longest=longest)


# --- clinic settings (managers) ------------------------------------------------------------------

WEEKDAY_LABELS = (
    _l("Monday"),
    _l("Tuesday"),
    _l("Wednesday"),
    _l("Thursday"),
    _l("Friday"),
    _l("Saturday"),
    _l("Sunday"),
)


def _own_clinic(clinic_id: int) -> Clinic:
    """Return a clinic of the manager's own site. Raises NotFound for any other."""
    clinic = get_session().get(Clinic, clinic_id)
    if clinic is None or clinic.site_id != current_principal().site_id:
        raise NotFound(_("There is no such clinic."))
    return clinic


@bp.get("/booking/clinics")
@roles_required("manager")
def clinics() -> str:
    """List the site's clinics with the visit fee each charges at check-in."""
    session = get_session()
    rows = session.scalars(
        select(Clinic).where(Clinic.site_id == current_principal().site_id).order_by(Clinic.name)
    ).all()
    today = _today()
    return render_template(
        "booking/clinics.html",
        clinics=rows,
        fees={c.id: services.visit_fee(session, c.visit_code, today) for c in rows},
    )


@bp.get("/booking/clinics/<int:clinic_id>")
@roles_required("manager")
def clinic_settings(clinic_id: int) -> str:
    """Show a clinic's settings: its visit fee and its weekly sessions (in the room or by video)."""
    clinic = _own_clinic(clinic_id)
    session = get_session()
    templates = session.scalars(
        select(WeeklyTemplate)
        .where(WeeklyTemplate.clinic_id == clinic.id)
        .order_by(WeeklyTemplate.weekday, WeeklyTemplate.starts)
    ).all()
    return render_template(
        "booking/clinic_settings.html",
        clinic=clinic,
        fee=services.visit_fee(session, clinic.visit_code, _today()),
        templates=templates,
        weekdays=WEEKDAY_LABELS,
    )


@bp.post("/booking/clinics/<int:clinic_id>/visit-code")
@roles_required("manager")
def clinic_visit_code(clinic_id: int) -> BaseResponse:
    """Set or clear the price-list code of the clinic's visit fee."""
    clinic = _own_clinic(clinic_id)
    try:
        services.set_visit_code(get_session(), clinic, request.form.get("visit_code"), day=_today())
    except VetinhError as exc:
        flash(_(exc.message), "error")
        for name, text in exc.fields.items():
            flash(f"{name}: {_(text)}", "error")
    else:
        flash(_("The clinic's settings were saved."), "success")
    return _back("booking.clinic_settings", clinic_id=clinic_id)


@bp.post("/booking/clinics/<int:clinic_id>/templates/<int:template_id>/video")
@roles_required("manager")
def clinic_template_video(clinic_id: int, template_id: int) -> BaseResponse:
    """Mark a weekly session video or in the room; sessions generated from now on follow it."""
    clinic = _own_clinic(clinic_id)
    template = get_session().get(WeeklyTemplate, template_id)
    if template is None or template.clinic_id != clinic.id:
        raise NotFound(_("There is no such weekly session."))
    services.set_template_video(get_session(), template, request.form.get("video") == "1")
    flash(_("The clinic's settings were saved."), "success")
    return _back("booking.clinic_settings", clinic_id=clinic_id)


@bp.get("/booking/events")
@login_required
def live_events() -> Response:
    """Stream queue events to a signed-in page (numbers only, never names)."""
    return events.sse_response(["queue.*", "appointment.*"])


# --- the desk ---------------------------------------------------------------------------------


def _todays_sessions(site_id: int | None) -> list[ClinicSession]:
    return list(
        get_session().scalars(
            select(ClinicSession)
            .join(Clinic, Clinic.id == ClinicSession.clinic_id)
            .where(Clinic.site_id == site_id, ClinicSession.day == _today(), ClinicSession.status == "open")
            .order_by(Clinic.name, ClinicSession.starts_at)
        )
    )


@bp.get("/booking/desk")
@roles_required("receptionist", "nurse")
def desk() -> str:
    """Check patients in by their QR code and register walk-ins."""
    principal = current_principal()
    sessions = _todays_sessions(principal.site_id)
    return render_template(
        "booking/desk.html",
        sessions=sessions,
        queues={s.id: api.queue_state(s) for s in sessions},
    )


@bp.post("/booking/desk/checkin")
@roles_required("receptionist", "nurse")
def desk_check_in() -> BaseResponse:
    """Check in the booking whose code was scanned or typed."""
    principal = current_principal()
    session = get_session()
    try:
        booking_id = services.read_checkin_code(api.signing_secret(), request.form.get("code", ""))
        booking = services.find_booking(session, booking_id)
        _booking, fresh = services.check_in(session, booking, site_id=principal.site_id, zone=api.zone())
    except VetinhError as exc:
        flash(_(exc.message), "error")
        return _back("booking.desk")
    audit.record("check-in", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    message = _(
        "Checked in: number %(number)s, %(room)s.",
        number=booking.queue_number,
        room=booking.session.clinic.room,
    )
    if not fresh:
        message = _("Already checked in: number %(number)s.", number=booking.queue_number)
    flash(message, "success")
    return _back("booking.desk")


@bp.post("/booking/desk/walk-in")
@roles_required("receptionist", "nurse")
def desk_walk_in() -> BaseResponse:
    """Register a walk-in (an existing patient by id, or a new one) and give a walk-in number."""
    principal = current_principal()
    session = get_session()
    form = request.form
    try:
        clinic_session = api.staff_session(principal, int(form.get("session_id") or 0))
        patient_id = form.get("patient_id", "").strip()
        if not patient_id:
            try:
                birth = date.fromisoformat(form.get("birth_date", ""))
            except ValueError:
                raise ValidationFailed(fields={"birth_date": _("Use the format YYYY-MM-DD.")}) from None
            patient_id = create_patient(
                session,
                PatientDetails(
                    full_name=form.get("full_name", ""),
                    birth_date=birth,
                    sex=form.get("sex", "unknown"),
                    phone=form.get("phone") or None,
                ),
                site_id=principal.site_id,
            )
        else:
            api.patient_for_booking(principal, {"patient_id": patient_id})
        result = services.register_walk_in(
            session,
            services.BookingRequest(
                session_id=clinic_session.id, patient_id=patient_id, booked_by=principal.user_id
            ),
            zone=api.zone(),
        )
    except VetinhError as exc:
        flash(_(exc.message), "error")
        for name, text in exc.fields.items():
            flash(f"{name}: {_(text)}", "error")
        return _back("booking.desk")
    audit.record("create", "Appointment", result.booking.appointment_id, patient_id=patient_id)
    flash(
        _(
            "Walk-in number %(number)s, %(room)s.",
            number=result.booking.queue_number,
            room=clinic_session.clinic.room,
        ),
        "success",
    )
    return _back("booking.desk")


# --- the doctor's console -----------------------------------------------------------------------


@bp.get("/booking/console")
@roles_required("doctor", "nurse")
def console_list() -> str:
    """List today's sessions of the site, the doctor's own first."""
    principal = current_principal()
    sessions = sorted(_todays_sessions(principal.site_id), key=lambda s: s.doctor_id != principal.user_id)
    return render_template("booking/console_list.html", sessions=sessions)


@bp.get("/booking/console/<int:session_id>")
@roles_required("doctor", "nurse")
def console(session_id: int) -> str:
    """Run a session's queue: call next, recall, skip, done; a video session lists its visits' links."""
    clinic_session = api.staff_session(current_principal(), session_id)
    video_bookings = (
        services.waiting(get_session(), clinic_session.id, arrived_only=False)
        + ([serving] if (serving := services.current_call(get_session(), clinic_session.id)) else [])
        if clinic_session.video
        else []
    )
    return render_template(
        "booking/console.html",
        clinic_session=clinic_session,
        queue=api.queue_state(clinic_session),
        video_bookings=sorted(video_bookings, key=lambda b: (b.sort_key, b.queue_number)),
    )


@bp.post("/booking/console/<int:session_id>/<any(next, recall, skip, done):action>")
@roles_required("doctor", "nurse")
def console_action(session_id: int, action: str) -> BaseResponse:
    """Run one console action and come back to the console."""
    principal = current_principal()
    clinic_session = api.staff_session(principal, session_id)
    actions = {
        "next": services.call_next,
        "recall": services.recall,
        "skip": services.skip,
        "done": services.mark_done,
    }
    try:
        booking = actions[action](get_session(), clinic_session, by_user_id=principal.user_id)
    except VetinhError as exc:
        flash(_(exc.message), "error")
    else:
        audit.record(f"queue-{action}", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return _back("booking.console", session_id=session_id)


# --- the queue board ----------------------------------------------------------------------------


@bp.get("/booking/board")
@login_required
def board_index() -> BaseResponse:
    """Open the queue board of the user's site."""
    principal = current_principal()
    site = get_session().get(Site, principal.site_id) if principal.site_id else None
    if site is None:
        raise NotFound(_("Your account belongs to no site."))
    return _back("booking.board", site_code=site.code)


def _board_site(site_code: str) -> Site:
    site = get_session().scalar(select(Site).where(Site.code == site_code))
    if site is None:
        raise NotFound()
    return site


def board_state(site: Site) -> list[dict[str, Any]]:
    """Describe, per clinic running today, the number served and the next ones (numbers only)."""
    rows = []
    for clinic_session in _todays_sessions(site.id):
        queue = api.queue_state(clinic_session)
        rows.append(
            {
                "session_id": clinic_session.id,
                "clinic": clinic_session.clinic.name,
                "room": clinic_session.clinic.room,
                "part": str(PART_LABELS[clinic_session.part]),
                "serving": queue["serving"],
                "next": queue["waiting"][:5],
            }
        )
    return rows


@bp.get("/booking/board/<site_code>")
def board(site_code: str) -> str:
    """Show the waiting hall's TV board: served and next numbers per clinic, announced aloud."""
    site = _board_site(site_code)
    return render_template("booking/board.html", site=site, clinics=board_state(site))


@bp.get("/booking/board/<site_code>/state")
def board_state_json(site_code: str) -> Response:
    """Return the board's numbers as JSON (the board fetches it when an event says to look again)."""
    return jsonify(board_state(_board_site(site_code)))


@bp.get("/booking/board/<site_code>/events")
def board_events(site_code: str) -> Response:
    """Stream the queue events the board listens to."""
    _board_site(site_code)
    return events.sse_response(["queue.*"])
