"""HTTP entry points of the telehealth context: the room API, the call API and the call page.

Staff endpoints authenticate like the rest of the API (session or bearer token). The
call endpoints (``/api/v1/telehealth/call/...``) authenticate with the participant's
join token in the ``X-Call-Token`` header: the call page reads it from the link's
fragment, so it never reaches a server log, a proxy or the audit trail.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from typing import Any

import click
from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from flask.cli import with_appcontext
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response as BaseResponse

from his import audit
from his.db import as_utc, begin_immediate, get_session
from his.errors import N_, BadRequest, UnsupportedMediaType, ValidationFailed
from his.events import sse_response
from his.navigation import add_nav_item
from his.openapi import api_doc
from his.policy import ensure_patient_access
from his.security import current_principal, login_required
from telehealth import demo as _demo  # noqa: F401 - registers the demo loader
from telehealth import jobs as _jobs  # noqa: F401 - registers the context's jobs
from telehealth import media, services
from telehealth.models import Participant, Room
from telehealth.recording import stop_recording

bp = Blueprint(
    "telehealth",
    __name__,
    template_folder="templates",
    static_folder="static/telehealth",
    static_url_path="/static/telehealth",
    cli_group=None,
)

# POSTs that only read: signalling and the echo must not queue behind writers.
READ_ONLY_POSTS = (
    "/api/v1/telehealth/call/signal",
    "/api/v1/telehealth/call/echo",
    "/api/v1/telehealth/call/recording/offer",
)


@bp.before_request
def _take_write_lock() -> None:
    """Start a writing request's transaction with SQLite's write lock held.

    A deferred SQLite transaction that reads first and writes later fails at once with
    "database is locked" when another connection (the audit writer, another worker)
    writes in between; taking the lock first makes it wait its turn instead.
    """
    if request.method != "POST" or request.path in READ_ONLY_POSTS:
        return
    session = get_session()
    if session.get_bind().dialect.name != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return
        session.commit()
    begin_immediate(session)


add_nav_item("telehealth.my_calls", _l("Video calls"), {"doctor", "nurse", "patient", "manager"}, order=60)

CALL_HEADER = "X-Call-Token"
SSE_KEEPALIVE_SECONDS = 5.0
CALL_AUTH = [{"name": CALL_HEADER, "in": "header", "required": True, "schema": {"type": "string"}}]
ROOM_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["visit", "consult"]},
        "status": {"type": "string", "enum": ["planned", "open", "ended", "cancelled"]},
        "patient_id": {"type": "string", "nullable": True},
        "appointment_id": {"type": "string", "nullable": True},
        "service_request_id": {"type": "string", "nullable": True},
        "encounter_id": {"type": "string", "nullable": True},
        "planned_start": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer"},
        "grace_minutes": {"type": "integer"},
        "ends_at": {"type": "string", "format": "date-time"},
        "hard_end": {"type": "string", "format": "date-time"},
        "participants": {"type": "array", "items": {"type": "object"}},
        "links": {
            "type": "array",
            "description": "each invited participant's own link, shown once",
            "items": {
                "type": "object",
                "properties": {
                    "participant_id": {"type": "integer"},
                    "name": {"type": "string"},
                    "role": {"type": "string"},
                    "token": {"type": "string"},
                    "url": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}
SCHEDULE_INPUT: dict[str, Any] = {
    "planned_start": {"type": "string", "format": "date-time"},
    "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 240, "default": 20},
    "grace_minutes": {"type": "integer", "minimum": 0, "maximum": 30, "default": 5},
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


def _moment(body: dict[str, Any], name: str) -> datetime:
    raw = body.get(name)
    try:
        value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(fields={name: N_("Give a date and time with its time zone.")}) from None
    if value.tzinfo is None:
        raise ValidationFailed(fields={name: N_("Give a date and time with its time zone.")})
    return as_utc(value)


def _whole(body: dict[str, Any], name: str, default: int) -> int:
    raw = body.get(name, default)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ValidationFailed(fields={name: N_("Give a whole number.")})
    return raw


def _text(body: dict[str, Any], name: str, *, required: bool = True, limit: int = 4000) -> str:
    raw = body.get(name, "")
    if not isinstance(raw, str) or len(raw) > limit or (required and not raw.strip()):
        raise ValidationFailed(fields={name: N_("This field is required.")})
    return raw


def _links(new_room: services.NewRoom) -> list[dict[str, Any]]:
    return [
        {
            "participant_id": invitation.participant.id,
            "name": invitation.participant.display_name,
            "role": invitation.participant.role,
            "token": invitation.token,
            "url": url_for("telehealth.call_page", _external=True) + "#" + invitation.token,
            "expires_at": services.store.instant(as_utc(invitation.participant.token_expires_at)),
        }
        for invitation in new_room.invitations
    ]


def _room_created(new_room: services.NewRoom) -> tuple[Response, int]:
    session = get_session()
    body = services.describe_room(new_room.room, services.room_participants(session, new_room.room))
    body["links"] = _links(new_room)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.post("/api/v1/telehealth/rooms")
@login_required
@api_doc(
    "Create the room of a video visit: the calling doctor hosts, the patient waits in the lobby "
    "until admitted. Returns each participant's own join link once.",
    tags=["telehealth"],
    request={
        "type": "object",
        "required": ["patient_id", "planned_start"],
        "properties": {
            "patient_id": {"type": "string"},
            "appointment_id": {
                "type": "string",
                "description": "the video Appointment this visit belongs to",
            },
            **SCHEDULE_INPUT,
        },
    },
    responses={201: ROOM_OUTPUT, 401: None, 403: None, 404: None, 422: None},
)
def create_room() -> tuple[Response, int]:
    """Create a video visit room."""
    body = json_body()
    principal = current_principal()
    patient_id = _text(body, "patient_id", limit=64)
    appointment_id = body.get("appointment_id")
    if appointment_id is not None and (not isinstance(appointment_id, str) or not appointment_id):
        raise ValidationFailed(fields={"appointment_id": N_("Give the appointment's id.")})
    ensure_patient_access(principal, patient_id, "write")
    new_room = services.create_visit_room(
        get_session(),
        principal,
        patient_id=patient_id,
        appointment_id=appointment_id,
        planned_start=_moment(body, "planned_start"),
        duration_minutes=_whole(body, "duration_minutes", 20),
        grace_minutes=_whole(body, "grace_minutes", 5),
    )
    audit.record("create", "TelehealthRoom", new_room.room.id, patient_id=patient_id)
    return _room_created(new_room)


@bp.post("/api/v1/telehealth/consults")
@login_required
@api_doc(
    "Ask the central hospital for a consultation (hội chẩn): a ServiceRequest with category "
    "teleconsultation, the clinical summary and attachments (DocumentReference ids).",
    tags=["telehealth"],
    request={
        "type": "object",
        "required": ["patient_id", "reason", "summary"],
        "properties": {
            "patient_id": {"type": "string"},
            "reason": {"type": "string"},
            "summary": {"type": "string"},
            "to_site": {"type": "string", "description": "site code; the central site when left out"},
            "attachments": {"type": "array", "items": {"type": "string"}},
        },
    },
    responses={201: {"type": "object"}, 401: None, 403: None, 422: None},
)
def create_consult() -> tuple[Response, int]:
    """Create a consult request."""
    body = json_body()
    principal = current_principal()
    patient_id = _text(body, "patient_id", limit=64)
    attachments = body.get("attachments") or []
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise ValidationFailed(fields={"attachments": N_("Give a list of document ids.")})
    to_site = body.get("to_site")
    ensure_patient_access(principal, patient_id, "write")
    stored = services.create_consult_request(
        get_session(),
        principal,
        services.ConsultInput(
            patient_id=patient_id,
            reason=_text(body, "reason", required=False),
            summary=_text(body, "summary", required=False, limit=20000),
            to_site=to_site if isinstance(to_site, str) else None,
            attachments=tuple(attachments),
        ),
    )
    audit.record("create", "ServiceRequest", stored.id, patient_id=patient_id)
    response = jsonify({"id": stored.id, "service_request": stored.reference, "status": "active"})
    response.headers["Location"] = f"/fhir/R4/ServiceRequest/{stored.id}"
    return response, 201


@bp.post("/api/v1/telehealth/consults/<service_request_id>/schedule")
@login_required
@api_doc(
    "Assign a specialist and a time to a consult request (staff of the consulted site) and "
    "create its room; the requesting doctor, the specialist and the patient (optional) are invited.",
    tags=["telehealth"],
    request={
        "type": "object",
        "required": ["specialist_id", "planned_start"],
        "properties": {
            "specialist_id": {"type": "integer", "description": "user id of a doctor of the consulted site"},
            "include_patient": {"type": "boolean", "default": False},
            **SCHEDULE_INPUT,
        },
    },
    responses={201: ROOM_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def schedule_consult(service_request_id: str) -> tuple[Response, int]:
    """Schedule a consult request."""
    body = json_body()
    new_room = services.schedule_consult(
        get_session(),
        current_principal(),
        service_request_id,
        specialist_user_id=_whole(body, "specialist_id", 0),
        planned_start=_moment(body, "planned_start"),
        duration_minutes=_whole(body, "duration_minutes", 20),
        grace_minutes=_whole(body, "grace_minutes", 5),
        include_patient=bool(body.get("include_patient", False)),
    )
    audit.record("create", "TelehealthRoom", new_room.room.id, patient_id=new_room.room.patient_id)
    return _room_created(new_room)


def _host_room(room_id: str) -> Room:
    """Return a room the caller created or belongs to as staff of its site.

    Raises RoomNotFound, Forbidden (audited).
    """
    session = get_session()
    room = services.get_room(session, room_id)
    principal = current_principal()
    if not principal.is_staff or principal.site_id != room.site_id:
        audit.record("update", "TelehealthRoom", room.id, patient_id=room.patient_id, outcome="denied")
        raise services.Forbidden(N_("You may not manage this call."), code="CALL_NOT_YOURS")
    return room


@bp.post("/api/v1/telehealth/rooms/<room_id>/participants")
@login_required
@api_doc(
    "Invite one more person to a call (staff of the room's site): a user by id, or a guest by "
    "name. A call takes up to 4 people at once.",
    tags=["telehealth"],
    request={
        "type": "object",
        "properties": {
            "user_id": {"type": "integer"},
            "name": {"type": "string"},
            "wait_in_lobby": {"type": "boolean", "default": True},
        },
    },
    responses={201: ROOM_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def invite(room_id: str) -> tuple[Response, int]:
    """Invite a participant."""
    from his.models import User

    body = json_body()
    session = get_session()
    room = _host_room(room_id)
    if room.status in ("ended", "cancelled"):
        raise services.CallEnded()
    user = None
    if body.get("user_id") is not None:
        user = session.get(User, _whole(body, "user_id", 0))
        if user is None:
            raise ValidationFailed(fields={"user_id": N_("There is no such user.")})
        name = user.full_name
    else:
        name = _text(body, "name", limit=200).strip()
    is_patient = user is not None and user.role == "patient"
    invitation = services.add_participant(
        session,
        room,
        display_name=name,
        role="patient" if is_patient else ("doctor" if user is not None else "guest"),
        user_id=user.id if user is not None else None,
        patient_id=user.patient_id if is_patient and user is not None else None,
        needs_admission=bool(body.get("wait_in_lobby", True)) or user is None or is_patient,
    )
    audit.record("invite", "TelehealthRoom", room.id, patient_id=room.patient_id)
    return _room_created(services.NewRoom(room, [invitation]))


@bp.post("/api/v1/telehealth/rooms/<room_id>/link")
@login_required
@api_doc(
    "Give the logged-in participant a fresh join link for a call they are invited to "
    "(their earlier link stops working).",
    tags=["telehealth"],
    responses={201: ROOM_OUTPUT, 401: None, 403: None, 404: None, 410: None},
)
def own_link(room_id: str) -> tuple[Response, int]:
    """Reissue the caller's own join link."""
    session = get_session()
    room = services.get_room(session, room_id)
    invitation = services.reissue_own_link(session, current_principal(), room)
    return _room_created(services.NewRoom(room, [invitation]))


@bp.post("/api/v1/telehealth/rooms/<room_id>/note")
@login_required
@api_doc(
    "Write the consult note of a call (a Composition); for a consult request, the request is "
    "completed and the outcome goes back to the requesting site.",
    tags=["telehealth"],
    request={
        "type": "object",
        "required": ["title", "text"],
        "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
    },
    responses={201: {"type": "object"}, 401: None, 403: None, 404: None, 422: None},
)
def consult_note(room_id: str) -> tuple[Response, int]:
    """Write a consult note."""
    body = json_body()
    session = get_session()
    room = services.get_room(session, room_id)
    stored = services.write_consult_note(
        session,
        current_principal(),
        room,
        _text(body, "title", required=False, limit=200),
        _text(body, "text", required=False, limit=50000),
    )
    return jsonify({"id": stored.id, "composition": stored.reference, "encounter_id": room.encounter_id}), 201


def _caller() -> tuple[Participant, Room]:
    token = services.parse_token(request.headers.get(CALL_HEADER))
    return services.participant_for_token(get_session(), token, current_principal())


def _call_state(participant: Participant, room: Room, peers: list[Participant], state: str) -> dict[str, Any]:
    settings = current_app.extensions["vetinh.settings"]
    return {
        "participant": services.describe_participant(participant),
        "state": state,
        "host": not participant.needs_admission,
        "room": services.describe_room(room),
        "peers": [services.describe_participant(p) for p in peers],
        "ice_servers": services.ice_servers(settings, participant.id, services.turn_credentials_until(room)),
        "server_time": services.server_time(),
    }


CALL_STATE = {
    "type": "object",
    "properties": {
        "participant": {"type": "object"},
        "state": {"type": "string", "enum": ["waiting", "in_call"]},
        "host": {"type": "boolean", "description": "whether this participant admits others"},
        "room": {"type": "object"},
        "peers": {"type": "array", "items": {"type": "object"}, "description": "whom to send offers to"},
        "ice_servers": {"type": "array", "items": {"type": "object"}},
        "server_time": {"type": "number"},
    },
}


@bp.post("/api/v1/telehealth/call/join")
@api_doc(
    "Join a call with one's own link: a doctor enters at once, a patient waits in the lobby "
    "until admitted. The newcomer sends an offer to every peer listed. Anyone else's or an "
    "expired link gets 403; a fifth person at once gets 409; a finished call 410.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: CALL_STATE, 403: None, 409: None, 410: None},
)
def call_join() -> Response:
    """Join a call or its lobby."""
    session = get_session()
    participant, room = _caller()
    if session.get_bind().dialect.name == "postgresql":
        # Count who is in the call and take a place in one step (SQLite holds its write lock already).
        session.refresh(room, with_for_update=True)
    result = services.join(session, participant, room)
    if (
        result.state == "in_call"
        and room.recording_started_at
        and not services.consented(session, participant)
    ):
        # Nobody is recorded without consent: a newcomer who has not consented stops it.
        stop_recording(session, room, "consent")
    return jsonify(_call_state(participant, room, result.peers, result.state))


@bp.get("/api/v1/telehealth/call/ice")
@api_doc(
    "Return fresh ICE servers with short-lived TURN credentials (coturn shared-secret scheme).",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: {"type": "object"}, 403: None},
)
def call_ice() -> Response:
    """Return ICE servers."""
    participant, room = _caller()
    settings = current_app.extensions["vetinh.settings"]
    return jsonify(
        ice_servers=services.ice_servers(settings, participant.id, services.turn_credentials_until(room)),
    )


@bp.get("/api/v1/telehealth/call/events")
@api_doc(
    "Stream the call's events (text/event-stream): signalling addressed to this participant, "
    "lobby decisions, and, once admitted, joins, leaves, chat and the end of the call.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: None, 403: None, 410: None},
)
def call_events() -> Response:
    """Stream a participant's events."""
    participant, room = _caller()
    # A short keep-alive notices a closed tab within seconds and frees its server thread.
    settings = current_app.extensions["vetinh.settings"]
    keepalive = float(settings.telehealth_sse_keepalive or SSE_KEEPALIVE_SECONDS)
    return sse_response(services.stream_topics(participant, room), keepalive=keepalive)


@bp.post("/api/v1/telehealth/call/signal")
@api_doc(
    "Send an offer, answer or ICE candidate to another participant of the call; it is "
    "checked and relayed over the event bus. Malformed messages get 422, messages from "
    "someone not in the call 403.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={
        "type": "object",
        "required": ["type", "to"],
        "properties": {
            "type": {"type": "string", "enum": ["offer", "answer", "candidate"]},
            "to": {"type": "integer"},
            "sdp": {"type": "string"},
            "candidate": {"type": "object", "nullable": True},
            "ref": {
                "type": "string",
                "maxLength": 64,
                "description": "which connection and offer the message belongs to; relayed as is",
            },
        },
    },
    responses={202: None, 403: None, 410: None, 415: None, 422: None},
)
def call_signal() -> tuple[Response, int]:
    """Relay a signalling message."""
    participant, room = _caller()
    body = json_body()
    services.relay_signal(get_session(), participant, room, services.parse_signal(body))
    return jsonify(status="relayed"), 202


@bp.get("/api/v1/telehealth/call/lobby")
@api_doc(
    "List who waits in the lobby (the doctor running the call).",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: {"type": "object"}, 403: None},
)
def call_lobby() -> Response:
    """List the lobby."""
    participant, room = _caller()
    return jsonify(waiting=services.lobby(get_session(), participant, room))


@bp.post("/api/v1/telehealth/call/lobby")
@api_doc(
    "Admit or decline someone waiting, or send someone back to the lobby.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={
        "type": "object",
        "required": ["participant", "action"],
        "properties": {
            "participant": {"type": "integer"},
            "action": {"type": "string", "enum": ["admit", "decline", "back"]},
        },
    },
    responses={200: {"type": "object"}, 403: None, 404: None, 409: None, 422: None},
)
def call_lobby_action() -> Response:
    """Decide about someone in the lobby."""
    participant, room = _caller()
    body = json_body()
    target = services.lobby_action(
        get_session(), participant, room, _whole(body, "participant", 0), str(body.get("action", ""))
    )
    return jsonify(services.describe_participant(target))


@bp.post("/api/v1/telehealth/call/leave")
@api_doc(
    "Leave the call (the same link brings one back while the call lasts).",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: None, 403: None},
)
def call_leave() -> Response:
    """Leave the call."""
    participant, room = _caller()
    services.leave(get_session(), participant, room)
    return jsonify(state=participant.state)


@bp.post("/api/v1/telehealth/call/end")
@api_doc(
    "End the call for everyone (the doctor running it); the Encounter is finished.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: None, 403: None},
)
def call_end() -> Response:
    """End the call."""
    participant, room = _caller()
    session = get_session()
    if not participant.needs_admission and participant.state == "in_call":
        stop_recording(session, room, "ended")
    services.end_by_host(session, participant, room)
    return jsonify(status=room.status)


@bp.get("/api/v1/telehealth/call/chat")
@api_doc(
    "Read the call's chat so far.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: {"type": "object"}, 403: None},
)
def call_chat_history() -> Response:
    """Return the chat."""
    participant, room = _caller()
    return jsonify(messages=services.chat_history(get_session(), participant, room))


@bp.post("/api/v1/telehealth/call/chat")
@api_doc(
    "Send a chat message to everyone in the call; it is kept with the call.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    responses={201: {"type": "object"}, 403: None, 422: None},
)
def call_chat() -> tuple[Response, int]:
    """Send a chat message."""
    participant, room = _caller()
    body = json_body()
    message = services.post_chat(get_session(), participant, room, _text(body, "text", required=False))
    return jsonify(services.describe_message(message, participant)), 201


@bp.post("/api/v1/telehealth/call/files")
@api_doc(
    "Share a file (up to 5 MB) with everyone in the call; it is kept as a DocumentReference.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}},
    request_content_type="multipart/form-data",
    responses={201: {"type": "object"}, 403: None, 413: None, 422: None},
)
def call_share_file() -> tuple[Response, int]:
    """Share a file."""
    participant, room = _caller()
    upload = request.files.get("file")
    if upload is None:
        raise ValidationFailed(fields={"file": N_("Attach the file in the form field 'file'.")})
    data = upload.stream.read(services.MAX_FILE_BYTES + 1)
    message = services.share_file(
        get_session(), participant, room, upload.filename or "file", upload.mimetype or "", data
    )
    return jsonify(services.describe_message(message, participant)), 201


@bp.get("/api/v1/telehealth/call/files/<int:message_id>")
@api_doc(
    "Download a file shared in the call.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    responses={200: None, 403: None, 404: None},
)
def call_file(message_id: int) -> Response:
    """Return a shared file."""
    participant, room = _caller()
    name, content_type, data = services.shared_file_content(get_session(), participant, room, message_id)
    response = Response(data, mimetype=content_type)
    response.headers["Content-Disposition"] = "attachment; filename*=UTF-8''" + _quote(name)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@bp.post("/api/v1/telehealth/call/consent")
@api_doc(
    "Give or withdraw one's consent to recording this call (kept with the time).",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={"type": "object", "required": ["given"], "properties": {"given": {"type": "boolean"}}},
    responses={200: {"type": "object"}, 403: None},
)
def call_consent() -> Response:
    """Record consent to recording."""
    participant, room = _caller()
    body = json_body()
    given = body.get("given")
    if not isinstance(given, bool):
        raise ValidationFailed(fields={"given": N_("Say true or false.")})
    session = get_session()
    services.give_consent(session, participant, room, given)
    if not given:
        stop_recording(session, room, "consent")
    return jsonify(given=given, everyone=services.everyone_consented(session, room))


@bp.post("/api/v1/telehealth/call/echo")
@api_doc(
    "Pre-call test: send an offer with the browser's camera and microphone; the server's echo "
    "peer answers and sends the same media back for a minute.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={"type": "object", "required": ["sdp"], "properties": {"sdp": {"type": "string"}}},
    responses={200: {"type": "object"}, 403: None, 422: None, 429: None, 503: None},
)
def call_echo() -> Response:
    """Answer a pre-call test offer."""
    participant, room = _caller()
    body = json_body()
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > services.MAX_SDP_CHARS:
        raise ValidationFailed(fields={"sdp": N_("This is not a session description.")})
    services.stream_topics(participant, room)  # refuses a declined participant or a finished call
    answer = media.echo_answer(sdp)
    return jsonify(type="answer", sdp=answer)


@bp.post("/api/v1/telehealth/call/recording")
@api_doc(
    "Start or stop recording the call (the doctor running it). Starting needs the consent of "
    "everyone in the call (409 otherwise); everyone's page then shows that it is recording.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={
        "type": "object",
        "required": ["action"],
        "properties": {"action": {"type": "string", "enum": ["start", "stop"]}},
    },
    responses={200: {"type": "object"}, 403: None, 409: None, 410: None, 422: None},
)
def call_recording() -> Response:
    """Start or stop the recording."""
    participant, room = _caller()
    action = json_body().get("action")
    session = get_session()
    if action == "start":
        services.start_recording(session, participant, room)
        return jsonify(recording=True)
    if action == "stop":
        if participant.needs_admission:
            raise services.NotHost()
        if room.recording_started_at is None:
            raise services.NotRecording()
        documents = stop_recording(session, room, "stopped")
        return jsonify(recording=False, documents=documents)
    raise ValidationFailed(fields={"action": N_("Use start or stop.")})


@bp.post("/api/v1/telehealth/call/recording/offer")
@api_doc(
    "Send one's media to the recorder while the call is recorded: an offer with the "
    "browser's camera and microphone, answered by the media service's receive-only peer.",
    tags=["telehealth-call"],
    auth=False,
    parameters=CALL_AUTH,
    request={"type": "object", "required": ["sdp"], "properties": {"sdp": {"type": "string"}}},
    responses={200: {"type": "object"}, 403: None, 409: None, 422: None, 503: None},
)
def call_recording_offer() -> Response:
    """Connect a participant's media to the recorder."""
    from pathlib import Path

    participant, room = _caller()
    sdp = json_body().get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > services.MAX_SDP_CHARS:
        raise ValidationFailed(fields={"sdp": N_("This is not a session description.")})
    session = get_session()
    recording = services.recording_target(session, participant, room)
    settings = current_app.extensions["vetinh.settings"]
    answer = media.media_request(
        "record",
        {
            "key": services.recording_key(recording),
            "sdp": sdp,
            "path": str(Path(settings.data_dir) / recording.path),
        },
    )
    if session.get_bind().dialect.name == "sqlite":
        # Nothing is written yet: end the reading transaction and wait for the write lock,
        # rather than holding it while the media service set up its peer.
        session.rollback()
        begin_immediate(session)
    session.add(recording)
    return jsonify(type="answer", sdp=answer["sdp"])


@bp.get("/api/v1/telehealth/recordings/<int:recording_id>")
@login_required
@api_doc(
    "Download a finished recording (Matroska: H.264 video, Opus audio); staff of the call's site "
    "or invited to the call.",
    tags=["telehealth"],
    responses={200: None, 401: None, 403: None, 404: None},
)
def download_recording(recording_id: int) -> Response:
    """Send a recording file."""
    from pathlib import Path

    from flask import send_file

    recording, _room = services.readable_recording(get_session(), current_principal(), recording_id)
    settings = current_app.extensions["vetinh.settings"]
    root = Path(settings.data_dir).resolve()
    path = (root / recording.path).resolve()
    if root not in path.parents or not path.is_file():
        raise services.NotFound(N_("There is no such recording."), code="RECORDING_NOT_FOUND")
    return send_file(path, mimetype="video/x-matroska", as_attachment=True, download_name=path.name)


def _call_texts() -> dict[str, str]:
    """Return the call page's messages, translated, for its script."""
    return {
        "joining": _("Joining…"),
        "waiting": _("Please wait: the doctor will let you in shortly."),
        "declined": _("The doctor declined your request to join this call."),
        "sentBack": _("The doctor moved you back to the waiting room."),
        "inCall": _("You are in the call."),
        "ended": _("The call has ended."),
        "endedTime": _("The call has ended: its time is up."),
        "left": _("You left the call."),
        "linkInvalid": _("This call link is not valid. Ask for a new link."),
        "noLink": _("Open this page from the link you were given."),
        "error": _("Something went wrong; please try again."),
        "noDevice": _("No camera or microphone was found. Connect one and try again."),
        "blocked": _(
            "The browser is not allowed to use your camera or microphone. Allow it in the browser's settings and reload the page."
        ),
        "deviceBusy": _("Your camera or microphone is used by another program. Close it and try again."),
        "noMedia": _("This browser cannot make video calls. Use a recent Chrome, Firefox or Safari."),
        "cameraOk": _("Camera works"),
        "cameraBad": _("Camera sends no picture"),
        "micOk": _("Microphone works"),
        "micBad": _("Microphone sends no sound"),
        "connectionOk": _("Connection works"),
        "connectionBad": _("Connection failed"),
        "testing": _("Testing…"),
        "reconnecting": _("Connection lost; reconnecting…"),
        "qualityGood": _("Good connection"),
        "qualityFair": _("Fair connection"),
        "qualityPoor": _("Poor connection"),
        "remaining": _("Time left"),
        "grace": _("Time is up; the call will end in"),
        "admit": _("Admit"),
        "decline": _("Decline"),
        "sendBack": _("Send back to waiting room"),
        "waitingRoom": _("Waiting room"),
        "nobodyWaiting": _("Nobody is waiting."),
        "mute": _("Mute"),
        "unmute": _("Unmute"),
        "cameraOff": _("Camera off"),
        "cameraOn": _("Camera on"),
        "share": _("Share screen"),
        "stopShare": _("Stop sharing"),
        "you": _("You"),
        "file": _("File"),
        "full": _("This call already has the most participants it can take."),
        "tooEarly": _("This call has not opened yet; come back shortly before it starts."),
        "recording": _("Recording"),
        "recordingStopped": _("Recording stopped."),
        "recordingConsentStopped": _("Recording stopped: not everyone consents."),
        "startRecording": _("Start recording"),
        "stopRecording": _("Stop recording"),
        "consentMissing": _("Everyone in the call must consent before it is recorded."),
    }


@bp.get("/telehealth/call")
def call_page() -> str:
    """Show the call page; the join token is read by the script from the link's fragment."""
    return render_template("telehealth/call.html", texts=_call_texts())


@bp.get("/telehealth/")
@login_required
def my_calls() -> str:
    """List the caller's upcoming and open calls."""
    from sqlalchemy import select

    session = get_session()
    principal = current_principal()
    rooms = list(
        session.scalars(
            select(Room)
            .join(Participant, Participant.room_id == Room.id)
            .where(Participant.user_id == principal.user_id, Room.status.in_(("planned", "open")))
            .order_by(Room.planned_start)
        )
    )
    return render_template("telehealth/my_calls.html", rooms=rooms)


@bp.post("/telehealth/rooms/<room_id>/enter")
@login_required
def enter_room(room_id: str) -> BaseResponse:
    """Give the logged-in participant a fresh link and open the call page with it."""
    session = get_session()
    room = services.get_room(session, room_id)
    invitation = services.reissue_own_link(session, current_principal(), room)
    return redirect(url_for("telehealth.call_page") + "#" + invitation.token)


@bp.route("/telehealth/appointments/<appointment_id>", methods=["GET", "POST"])
@login_required
def appointment_call(appointment_id: str) -> BaseResponse | str:
    """Open the video visit booked as this Appointment (the link booking's pages give).

    GET shows the visit with a button; its POST gets or creates the visit's one room,
    gives the caller their own fresh link and opens the call page with it. Unknown or
    non-video appointments are 404, someone else's 403 (audited), a cancelled or
    finished booking 410.
    """
    from telehealth import appointments

    session = get_session()
    principal = current_principal()
    visit = appointments.find_video_visit(session, appointment_id)
    side = appointments.caller_side(session, principal, visit)
    appointments.ensure_bookable(visit)
    if request.method == "GET":
        audit.record("read", "Appointment", visit.appointment_id, patient_id=visit.patient_id)
        return render_template("telehealth/appointment.html", visit=visit, staff=side == "staff")
    room = appointments.visit_room(session, principal, visit, side)
    invitation = services.reissue_own_link(session, principal, room)
    return redirect(url_for("telehealth.call_page") + "#" + invitation.token, code=303)


@bp.cli.command("media")
@click.option("--seconds", type=float, default=0.0, help="Stop after this many seconds (0: until stopped).")
@with_appcontext
def media_command(seconds: float) -> None:
    """Run the media service (aiortc echo peers) as its own process, fed through the event bus."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.extensions["vetinh.settings"]
    if settings.events != "redis":
        raise click.ClickException(
            "vetinh media serves the web processes through Redis: set VETINH_REDIS_URL "
            "(with the memory bus the app runs its media service itself)."
        )
    service = media.MediaService(ice_urls=[u for u in settings.ice_servers.replace(",", " ").split() if u])
    service.start()
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_args: stop.set())
    if seconds > 0:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    click.echo("Vệ Tinh media service is running.")
    try:
        media.serve_bus_requests(app, service, stop)
    finally:
        service.stop()
