"""Serve the booking API: clinics, sessions, bookings, check-in, walk-ins and the doctor's queue."""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from flask import Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from booking import services
from booking.blueprint import bp
from booking.models import Booking, Clinic, ClinicSession
from his import audit
from his.db import begin_immediate, get_session, utcnow
from his.errors import N_, BadRequest, Forbidden, NotFound, UnsupportedMediaType, ValidationFailed
from his.i18n import local_zone
from his.openapi import api_doc
from his.policy import ensure_patient_access, linked_patient_ids, may_access_patient
from his.security import Principal, current_principal, login_required, roles_required, scope_required

BOOKING_ROLES = ("patient", "receptionist", "nurse", "doctor")
DESK_ROLES = ("receptionist", "nurse")
CONSOLE_ROLES = ("doctor", "nurse")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")

WINDOW_SCHEMA = {
    "type": "object",
    "properties": {
        "opens_at": {"type": "string", "format": "date-time"},
        "closes_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["not_open", "open", "closed"]},
    },
}
SESSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "clinic_id": {"type": "integer"},
        "date": {"type": "string", "format": "date"},
        "part": {"type": "string", "enum": ["morning", "afternoon"]},
        "starts_at": {"type": "string", "format": "date-time"},
        "ends_at": {"type": "string", "format": "date-time"},
        "doctor": {"type": "string", "nullable": True},
        "status": {"type": "string"},
        "video": {"type": "boolean", "description": "seen by video call instead of in the room"},
        "minutes_per_patient": {"type": "integer"},
        "online_capacity": {"type": "integer"},
        "walkin_capacity": {"type": "integer"},
        "remaining_online": {"type": "integer"},
        "window": WINDOW_SCHEMA,
    },
}
CLINIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "code": {"type": "string"},
        "name": {"type": "string"},
        "room": {"type": "string"},
        "department": {"type": "string"},
        "site": {"type": "string"},
        "numbering": {"type": "string", "enum": ["split", "alternate"]},
        "visit_code": {
            "type": "string",
            "nullable": True,
            "description": "price-list code of the visit fee charged at check-in (none: no fee)",
        },
        "location": {"type": "string", "description": "URL of the FHIR Location"},
        "healthcare_service": {"type": "string", "description": "URL of the FHIR HealthcareService"},
    },
}
BOOKING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "queue_number", "estimated_call_time", "checkin_code"],
    "properties": {
        "id": {"type": "integer"},
        "status": {
            "type": "string",
            "enum": ["booked", "arrived", "called", "done", "cancelled", "no_show", "missed"],
        },
        "channel": {"type": "string", "enum": ["online", "walkin"]},
        "queue_number": {"type": "integer", "example": 25},
        "estimated_call_time": {"type": "string", "format": "date-time"},
        "planned_call_time": {"type": "string", "format": "date-time"},
        "ahead": {"type": "integer", "description": "numbers still to be called before this one"},
        "now_serving": {"type": "integer", "nullable": True},
        "checkin_code": {
            "type": "string",
            "nullable": True,
            "description": "the text of the check-in QR (none for a video visit)",
        },
        "video": {"type": "boolean", "description": "a video visit: joined online, no desk check-in"},
        "video_link": {"type": "string", "nullable": True, "description": "path to join the video visit"},
        "patient_id": {"type": "string"},
        "session": {"type": "object"},
        "clinic": {"type": "object"},
        "appointment": {"type": "string", "description": "URL of the FHIR Appointment"},
        "encounter": {"type": "string", "nullable": True},
    },
}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "A unique key per booking attempt; a retry with the same key returns the same booking.",
    "schema": {"type": "string", "maxLength": 200},
}


def json_body() -> dict[str, Any]:
    """Return the request's JSON object.

    Raises UnsupportedMediaType or BadRequest for anything else.
    """
    if not request.is_json:
        raise UnsupportedMediaType(N_("Send the body as application/json."))
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(N_("The body must be a JSON object."), code="MALFORMED_JSON")
    return body


def zone() -> ZoneInfo:
    """Return the hospital's time zone."""
    return local_zone()


def signing_secret() -> str:
    """Return the key that signs check-in codes."""
    return str(current_app.config["SECRET_KEY"])


def int_field(body: dict[str, Any], name: str) -> int:
    """Read a required positive integer field. Raises ValidationFailed naming it."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={name: N_("Give a positive whole number.")}
        )
    return value


def idempotency_key() -> str:
    """Read the Idempotency-Key header. Raises BadRequest naming it when missing or malformed."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        raise BadRequest(
            N_("Send an Idempotency-Key header so that a retried request cannot book twice."),
            code="IDEMPOTENCY_KEY_REQUIRED",
            fields={"Idempotency-Key": N_("This header is required.")},
        )
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise BadRequest(
            N_("The Idempotency-Key must be 1 to 200 visible ASCII characters."),
            code="IDEMPOTENCY_KEY_INVALID",
            fields={"Idempotency-Key": N_("Use 1 to 200 visible ASCII characters.")},
        )
    return key


def idempotency_owner(principal: Principal) -> str:
    """Name whose idempotency keys these are, so two callers' keys never collide."""
    if principal.user_id is not None:
        return f"user:{principal.user_id}"
    return f"client:{principal.client_id}"


def patient_for_booking(principal: Principal, body: dict[str, Any]) -> str:
    """Choose and check the patient a booking is for.

    Raises ValidationFailed (no patient), Forbidden (not the caller's own or linked patient,
    or a patient the staff member's site does not care for).
    """
    raw = body.get("patient_id")
    if raw is not None and not isinstance(raw, str):
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={"patient_id": N_("Give a patient id.")}
        )
    if principal.role == "patient":
        patient_id = raw or principal.patient_id
        if not patient_id:
            raise ValidationFailed(
                N_("Some fields are not valid."), fields={"patient_id": N_("Give a patient id.")}
            )
        if patient_id not in linked_patient_ids(principal):
            audit.record("write", "Patient", patient_id, patient_id=patient_id, outcome="denied")
            raise Forbidden(
                N_("You may book only for yourself or a child linked to your account."),
                code="PATIENT_ACCESS_DENIED",
            )
        return patient_id
    if not raw:
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={"patient_id": N_("Give a patient id.")}
        )
    ensure_patient_access(principal, raw, "write")
    return raw


def visible_booking(principal: Principal, booking_id: int) -> Booking:
    """Return a booking the caller may see; any other booking is simply not found.

    Raises NotFound.
    """
    booking = get_session().get(Booking, booking_id)
    if booking is None or not may_see_booking(principal, booking):
        raise NotFound(N_("There is no such booking."), code="BOOKING_NOT_FOUND")
    return booking


def may_see_booking(principal: Principal, booking: Booking) -> bool:
    """Tell whether the caller is the patient (or their parent) or staff of the clinic's site."""
    if principal.role == "patient":
        return booking.patient_id in linked_patient_ids(principal)
    if principal.site_id is not None and booking.session.clinic.site_id == principal.site_id:
        return principal.is_staff
    return may_access_patient(principal, booking.patient_id, "read")


def staff_session(principal: Principal, session_id: int) -> ClinicSession:
    """Return a session of the staff member's own site. Raises NotFound for any other."""
    clinic_session = get_session().get(ClinicSession, session_id)
    if clinic_session is None or clinic_session.clinic.site_id != principal.site_id:
        raise NotFound(N_("There is no such session."), code="SESSION_NOT_FOUND")
    return clinic_session


def clinic_summary(clinic: Clinic) -> dict[str, Any]:
    """Describe a clinic for the API."""
    service = clinic.department.healthcare_service_id
    return {
        "id": clinic.id,
        "code": clinic.code,
        "name": clinic.name,
        "room": clinic.room,
        "department": clinic.department.name,
        "site": clinic.site.code,
        "numbering": clinic.numbering,
        "visit_code": clinic.visit_code,
        "location": f"/fhir/R4/Location/{clinic.location_id}" if clinic.location_id else None,
        "healthcare_service": f"/fhir/R4/HealthcareService/{service}" if service else None,
    }


@bp.before_request
def take_write_lock() -> None:
    """Start a writing request's transaction holding SQLite's write lock (a no-op on PostgreSQL).

    A deferred SQLite transaction that reads first and writes later fails with
    "database is locked" when another writer got in between; holding the lock from the
    start makes concurrent bookings wait their turn instead.
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    session = get_session()
    if session.get_bind().dialect.name != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return
        session.commit()
    begin_immediate(session)


@bp.get("/api/v1/clinics")
@login_required
@api_doc(
    "List the clinics open for booking (optionally of one site)",
    tags=["booking"],
    parameters=[{"name": "site", "in": "query", "required": False, "schema": {"type": "string"}}],
    responses={200: {"type": "array", "items": CLINIC_SCHEMA}, 401: None},
)
def list_clinics() -> Response:
    """Return the active clinics, by site and name."""
    query = (
        select(Clinic)
        .options(joinedload(Clinic.site), joinedload(Clinic.department))
        .where(Clinic.active.is_(True))
        .order_by(Clinic.site_id, Clinic.name)
    )
    site_code = request.args.get("site", "").strip()
    clinics = [c for c in get_session().scalars(query) if not site_code or c.site.code == site_code]
    return jsonify([clinic_summary(c) for c in clinics])


def parse_day(raw: str | None, field: str = "date") -> date:
    """Read a YYYY-MM-DD date. Raises ValidationFailed naming the field."""
    try:
        return date.fromisoformat(raw or "")
    except ValueError:
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={field: N_("Use the format YYYY-MM-DD.")}
        ) from None


@bp.get("/api/v1/clinics/<int:clinic_id>/sessions")
@login_required
@api_doc(
    "List a clinic's sessions on a day, with the online numbers left and the booking window",
    tags=["booking"],
    parameters=[
        {"name": "date", "in": "query", "required": True, "schema": {"type": "string", "format": "date"}}
    ],
    responses={200: {"type": "array", "items": SESSION_SCHEMA}, 401: None, 404: None, 422: None},
)
def list_sessions(clinic_id: int) -> Response:
    """Return the clinic's sessions on the requested day."""
    day = parse_day(request.args.get("date"))
    session = get_session()
    if session.get(Clinic, clinic_id) is None:
        raise NotFound(N_("There is no such clinic."), code="CLINIC_NOT_FOUND")
    now = utcnow()
    return jsonify(
        [
            services.session_summary(session, s, zone(), now)
            for s in services.sessions_of_clinic(session, clinic_id, day)
        ]
    )


@bp.post("/api/v1/bookings")
@roles_required(*BOOKING_ROLES)
@scope_required("Appointment", "write")
@api_doc(
    "Book the next online queue number of a session (a patient for themself or a linked child; "
    "a receptionist for a registered patient)",
    tags=["booking"],
    parameters=[IDEMPOTENCY_HEADER],
    request={
        "type": "object",
        "required": ["session_id"],
        "properties": {
            "session_id": {"type": "integer"},
            "patient_id": {
                "type": "string",
                "description": "required for staff; a patient's own id by default",
            },
        },
    },
    responses={201: BOOKING_SCHEMA, 400: None, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def create_booking() -> tuple[Response, int]:
    """Book a number; the same Idempotency-Key returns the same booking."""
    principal = current_principal()
    key = idempotency_key()
    body = json_body()
    session_id = int_field(body, "session_id")
    patient_id = patient_for_booking(principal, body)
    session = get_session()
    result = services.book(
        session,
        services.BookingRequest(
            session_id=session_id,
            patient_id=patient_id,
            booked_by=principal.user_id,
            idempotency_owner=idempotency_owner(principal),
            idempotency_key=key,
        ),
        zone=zone(),
    )
    booking = result.booking
    if not result.replayed:
        audit.record("create", "Appointment", booking.appointment_id, patient_id=patient_id)
    # The counter row stays locked until the request commits: answer from what is known.
    response = jsonify(services.booking_view(session, booking, secret=signing_secret(), live=result.replayed))
    response.headers["Location"] = f"/api/v1/bookings/{booking.id}"
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 201


@bp.get("/api/v1/bookings/<int:booking_id>")
@login_required
@scope_required("Appointment", "read")
@api_doc(
    "Read a booking with its live position and estimated call time",
    tags=["booking"],
    responses={200: BOOKING_SCHEMA, 401: None, 404: None},
)
def read_booking(booking_id: int) -> Response:
    """Return a booking the caller may see (anyone else's is 404)."""
    booking = visible_booking(current_principal(), booking_id)
    audit.record("read", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return jsonify(services.booking_view(get_session(), booking, secret=signing_secret()))


@bp.delete("/api/v1/bookings/<int:booking_id>")
@login_required
@scope_required("Appointment", "write")
@api_doc(
    "Cancel a booking before the clinic's cutoff (the number is not given to anyone else)",
    tags=["booking"],
    responses={200: BOOKING_SCHEMA, 401: None, 404: None, 409: None},
)
def delete_booking(booking_id: int) -> Response:
    """Cancel the caller's booking."""
    principal = current_principal()
    booking = visible_booking(principal, booking_id)
    if principal.role not in ("patient", *DESK_ROLES):
        raise Forbidden(N_("Your role does not allow this."), code="ROLE_REQUIRED")
    services.cancel_booking(get_session(), booking)
    audit.record("cancel", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return jsonify(services.booking_view(get_session(), booking, secret=signing_secret()))


@bp.post("/api/v1/bookings/<int:booking_id>/reschedule")
@login_required
@scope_required("Appointment", "write")
@api_doc(
    "Move a booking to another session: a new number there, the old one cancelled",
    tags=["booking"],
    parameters=[IDEMPOTENCY_HEADER],
    request={"type": "object", "required": ["session_id"], "properties": {"session_id": {"type": "integer"}}},
    responses={201: BOOKING_SCHEMA, 400: None, 401: None, 404: None, 409: None, 422: None},
)
def reschedule(booking_id: int) -> tuple[Response, int]:
    """Rebook into another session and cancel the old booking, all or nothing."""
    principal = current_principal()
    key = idempotency_key()
    booking = visible_booking(principal, booking_id)
    if principal.role not in ("patient", *DESK_ROLES):
        raise Forbidden(N_("Your role does not allow this."), code="ROLE_REQUIRED")
    session_id = int_field(json_body(), "session_id")
    result = services.reschedule_booking(
        get_session(),
        booking,
        services.BookingRequest(
            session_id=session_id,
            patient_id=booking.patient_id,
            booked_by=principal.user_id,
            idempotency_owner=idempotency_owner(principal),
            idempotency_key=key,
        ),
        zone=zone(),
    )
    audit.record("update", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return jsonify(services.booking_view(get_session(), result.booking, secret=signing_secret())), 201


@bp.post("/api/v1/checkins")
@roles_required(*DESK_ROLES)
@api_doc(
    "Check a booked patient in by the code of their QR; the Encounter starts (arrived)",
    tags=["booking"],
    request={"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}},
    responses={200: BOOKING_SCHEMA, 400: None, 401: None, 403: None, 404: None, 409: None},
)
def api_check_in() -> Response:
    """Check in the booking a code names."""
    principal = current_principal()
    code = json_body().get("code")
    booking_id = services.read_checkin_code(signing_secret(), str(code or ""))
    session = get_session()
    booking = services.find_booking(session, booking_id)
    services.check_in(session, booking, site_id=principal.site_id, zone=zone())
    audit.record("check-in", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return jsonify(services.booking_view(session, booking, secret=signing_secret()))


@bp.post("/api/v1/sessions/<int:session_id>/walk-ins")
@roles_required(*DESK_ROLES)
@api_doc(
    "Register a walk-in at the desk: a number from the walk-in range, already checked in",
    tags=["booking"],
    request={"type": "object", "required": ["patient_id"], "properties": {"patient_id": {"type": "string"}}},
    responses={201: BOOKING_SCHEMA, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def api_walk_in(session_id: int) -> tuple[Response, int]:
    """Give a walk-in number."""
    principal = current_principal()
    clinic_session = staff_session(principal, session_id)
    patient_id = patient_for_booking(principal, json_body())
    result = services.register_walk_in(
        get_session(),
        services.BookingRequest(
            session_id=clinic_session.id, patient_id=patient_id, booked_by=principal.user_id
        ),
        zone=zone(),
    )
    audit.record("create", "Appointment", result.booking.appointment_id, patient_id=patient_id)
    return jsonify(services.booking_view(get_session(), result.booking, secret=signing_secret())), 201


QUEUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session": SESSION_SCHEMA,
        "serving": {"type": "integer", "nullable": True},
        "waiting": {"type": "array", "items": {"type": "integer"}},
        "booked_not_arrived": {"type": "integer"},
    },
}


def queue_state(clinic_session: ClinicSession) -> dict[str, Any]:
    """Describe a session's queue: who is served, who waits (numbers only)."""
    session = get_session()
    serving = services.current_call(session, clinic_session.id)
    waiting = services.waiting(session, clinic_session.id)
    booked = [
        b for b in services.waiting(session, clinic_session.id, arrived_only=False) if b.status == "booked"
    ]
    return {
        "session": services.session_summary(session, clinic_session, zone(), utcnow()),
        "serving": serving.queue_number if serving else None,
        "waiting": [b.queue_number for b in waiting],
        "booked_not_arrived": len(booked),
    }


@bp.get("/api/v1/sessions/<int:session_id>/queue")
@roles_required("receptionist", "nurse", "doctor", "manager")
@api_doc(
    "Read a session's queue: the number being served and the checked-in numbers in call order",
    tags=["queue"],
    responses={200: QUEUE_SCHEMA, 401: None, 403: None, 404: None},
)
def api_queue(session_id: int) -> Response:
    """Return the session's queue."""
    return jsonify(queue_state(staff_session(current_principal(), session_id)))


def run_console(session_id: int, action: str) -> Response:
    """Run one console action on the session's queue and return the queue.

    Raises NotFound (another site's session) and Conflict (QUEUE_EMPTY, NOTHING_CALLED).
    """
    principal = current_principal()
    clinic_session = staff_session(principal, session_id)
    actions = {
        "next": services.call_next,
        "recall": services.recall,
        "skip": services.skip,
        "done": services.mark_done,
    }
    booking = actions[action](get_session(), clinic_session, by_user_id=principal.user_id)
    audit.record(f"queue-{action}", "Appointment", booking.appointment_id, patient_id=booking.patient_id)
    return jsonify(queue_state(clinic_session))


CONSOLE_DOC: dict[str, Any] = {
    "tags": ["queue"],
    "responses": {200: QUEUE_SCHEMA, 401: None, 403: None, 404: None, 409: None},
}


@bp.post("/api/v1/sessions/<int:session_id>/queue/next")
@roles_required(*CONSOLE_ROLES)
@api_doc("Doctor's console: finish the number being served and call the next checked-in one", **CONSOLE_DOC)
def api_call_next(session_id: int) -> Response:
    """Call the next number."""
    return run_console(session_id, "next")


@bp.post("/api/v1/sessions/<int:session_id>/queue/recall")
@roles_required(*CONSOLE_ROLES)
@api_doc("Doctor's console: announce the number being served again", **CONSOLE_DOC)
def api_recall(session_id: int) -> Response:
    """Recall the number being served."""
    return run_console(session_id, "recall")


@bp.post("/api/v1/sessions/<int:session_id>/queue/skip")
@roles_required(*CONSOLE_ROLES)
@api_doc("Doctor's console: send the called number back N places, or out after too many skips", **CONSOLE_DOC)
def api_skip(session_id: int) -> Response:
    """Skip the number being served."""
    return run_console(session_id, "skip")


@bp.post("/api/v1/sessions/<int:session_id>/queue/done")
@roles_required(*CONSOLE_ROLES)
@api_doc("Doctor's console: finish the number being served", **CONSOLE_DOC)
def api_done(session_id: int) -> Response:
    """Finish the number being served."""
    return run_console(session_id, "done")


@bp.post("/api/v1/bookings/<int:booking_id>/survey")
@roles_required("patient")
@scope_required("QuestionnaireResponse", "write")
@api_doc(
    "Answer the after-visit satisfaction survey (stored as a QuestionnaireResponse)",
    tags=["booking"],
    request={
        "type": "object",
        "required": ["overall"],
        "properties": {
            "overall": {"type": "integer", "minimum": 1, "maximum": 5},
            "waiting_ok": {"type": "boolean"},
            "comment": {"type": "string", "maxLength": 2000},
        },
    },
    responses={201: {"type": "object"}, 401: None, 404: None, 409: None, 422: None},
)
def api_survey(booking_id: int) -> tuple[Response, int]:
    """Record the survey answers of a visit that is done."""
    booking = visible_booking(current_principal(), booking_id)
    body = json_body()
    overall = body.get("overall")
    waiting_ok = body.get("waiting_ok")
    comment = body.get("comment") or ""
    if isinstance(overall, bool) or not isinstance(overall, int):
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={"overall": N_("Choose a score from 1 to 5.")}
        )
    if (waiting_ok is not None and not isinstance(waiting_ok, bool)) or not isinstance(comment, str):
        raise ValidationFailed(
            N_("Some fields are not valid."), fields={"waiting_ok": N_("Say true or false.")}
        )
    response_id = services.submit_survey(
        get_session(), booking, overall=overall, waiting_ok=waiting_ok, comment=comment
    )
    audit.record("create", "QuestionnaireResponse", response_id, patient_id=booking.patient_id)
    return jsonify(id=response_id, fhir=f"/fhir/R4/QuestionnaireResponse/{response_id}"), 201
