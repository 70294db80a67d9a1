"""Decide who is in which call: rooms, join tokens, the lobby, signalling, chat, the record.

Functions take a SQLAlchemy session and never commit; the request or job owns the unit
of work. Events go out on the bus (``his.events.publish``) once that unit commits:

``telehealth.room.<room id>``
    what everyone admitted to the call sees: joins, leaves, the lobby, chat, the end.
``telehealth.participant.<participant id>``
    what one participant alone sees: signalling addressed to them, lobby decisions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fhir import services as store
from his import audit
from his.db import as_utc, utcnow
from his.errors import N_, BadRequest, Conflict, Forbidden, Gone, NotFound, ValidationFailed
from his.events import publish
from his.models import PatientSiteAccess, Site, User
from his.security import Principal
from his.settings import Settings
from telehealth import fhir_mapping
from telehealth.models import ChatMessage, Consent, Participant, Recording, Room

MAX_IN_CALL = 4
MAX_INVITED = 6
EARLY_JOIN = timedelta(minutes=30)
MAX_SDP_CHARS = 100_000
MAX_CANDIDATE_CHARS = 2_000
MAX_CHAT_CHARS = 4_000
MAX_FILE_BYTES = 5 * 1024 * 1024
STAFF_CALL_ROLES = frozenset({"doctor", "nurse"})
COORDINATOR_ROLES = frozenset({"manager", "receptionist", "nurse", "doctor"})
SPECIALIST_ROLES = frozenset({"doctor", "pathologist"})
REQUESTING_USER_URL = "http://vetinh.vn/fhir/StructureDefinition/requesting-user"
SIGNAL_KINDS = frozenset({"offer", "answer", "candidate"})
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


class CallLinkInvalid(Forbidden):
    code = "CALL_LINK_INVALID"
    message = N_("This call link is not valid.")


class CallLinkExpired(Forbidden):
    code = "CALL_LINK_EXPIRED"
    message = N_("This call link has expired.")


class CallLinkNotYours(Forbidden):
    code = "CALL_LINK_NOT_YOURS"
    message = N_("This call link belongs to someone else.")


class CallDeclined(Forbidden):
    code = "CALL_DECLINED"
    message = N_("The doctor declined your request to join this call.")


class NotAdmitted(Forbidden):
    code = "CALL_NOT_ADMITTED"
    message = N_("Wait until the doctor admits you to the call.")


class NotHost(Forbidden):
    code = "CALL_NOT_HOST"
    message = N_("Only the doctor who runs the call can do this.")


class CallEnded(Gone):
    code = "CALL_ENDED"
    message = N_("This call has ended.")


class CallTooEarly(Conflict):
    code = "CALL_TOO_EARLY"
    message = N_("This call has not opened yet; come back shortly before it starts.")


class RoomFull(Conflict):
    code = "CALL_ROOM_FULL"
    message = N_("This call already has the most participants it can take.")


class RecordingRefused(Conflict):
    code = "RECORDING_CONSENT_MISSING"
    message = N_("Everyone in the call must consent before it is recorded.")


class NotRecording(Conflict):
    code = "RECORDING_NOT_RUNNING"
    message = N_("This call is not being recorded.")


class RoomNotFound(NotFound):
    code = "CALL_ROOM_NOT_FOUND"
    message = N_("There is no such call.")


class ConsultNotFound(NotFound):
    code = "CONSULT_NOT_FOUND"
    message = N_("There is no such consult request.")


def room_topic(room_id: str) -> str:
    """Name the topic everyone admitted to a room listens to."""
    return f"telehealth.room.{room_id}"


def participant_topic(participant_id: int) -> str:
    """Name the topic only one participant listens to."""
    return f"telehealth.participant.{participant_id}"


def hash_token(token: str) -> str:
    """Return the SHA-256 of a join token: the only form in which it is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _issue_token(participant: Participant, room: Room) -> str:
    token = secrets.token_urlsafe(32)
    participant.token_hash = hash_token(token)
    participant.token_expires_at = room.hard_end
    return token


def _site(session: Session, site_id: int | None) -> Site:
    site = session.get(Site, site_id) if site_id is not None else None
    if site is None:
        raise Forbidden(N_("Your account belongs to no site."), code="NO_SITE")
    return site


def _site_reference(site: Site) -> dict[str, Any]:
    return fhir_mapping.organization_reference(site.code, site.name, site.facility_code, site.organization_id)


def _share_patient(session: Session, patient_id: str, site_id: int, reason: str) -> None:
    exists = session.scalar(
        select(PatientSiteAccess.id).where(
            PatientSiteAccess.patient_id == patient_id, PatientSiteAccess.site_id == site_id
        )
    )
    if exists is None:
        session.add(PatientSiteAccess(patient_id=patient_id, site_id=site_id, reason=reason))


def _patient_name(session: Session, patient_id: str) -> str:
    patient = store.read(session, "Patient", patient_id).resource
    for name in patient.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        parts = [name.get("family", ""), *name.get("given", [])]
        if any(parts):
            return " ".join(p for p in parts if p)
    return patient_id


def check_schedule(planned_start: datetime, duration_minutes: int, grace_minutes: int, now: datetime) -> None:
    """Check a call's times.

    Raises ValidationFailed naming each bad field: a duration outside 5–240 minutes, a
    grace period outside 0–30 minutes, or a call that would already be over.
    """
    errors: dict[str, str] = {}
    if not 5 <= duration_minutes <= 240:
        errors["duration_minutes"] = N_("Choose between 5 and 240 minutes.")
    if not 0 <= grace_minutes <= 30:
        errors["grace_minutes"] = N_("Choose between 0 and 30 minutes.")
    if not errors and as_utc(planned_start) + timedelta(minutes=duration_minutes + grace_minutes) <= now:
        errors["planned_start"] = N_("This call would already be over.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)


@dataclass(frozen=True)
class Invitation:
    """A participant and the join token they were given (shown once, never stored)."""

    participant: Participant
    token: str


@dataclass
class NewRoom:
    """A room just created with its invitations."""

    room: Room
    invitations: list[Invitation] = field(default_factory=list)


def add_participant(
    session: Session,
    room: Room,
    *,
    display_name: str,
    role: str,
    user_id: int | None = None,
    patient_id: str | None = None,
    needs_admission: bool = False,
) -> Invitation:
    """Invite someone to a room and give them their own join token.

    Raises RoomFull when the room already has its most invitations, Conflict when the
    user is already invited.
    """
    invited = session.scalar(select(func.count(Participant.id)).where(Participant.room_id == room.id)) or 0
    if invited >= MAX_INVITED:
        raise RoomFull()
    if user_id is not None and session.scalar(
        select(Participant.id).where(Participant.room_id == room.id, Participant.user_id == user_id)
    ):
        raise Conflict(N_("This person is already invited."), code="CALL_ALREADY_INVITED")
    participant = Participant(
        room_id=room.id,
        user_id=user_id,
        patient_id=patient_id,
        display_name=display_name[:200],
        role=role,
        needs_admission=needs_admission,
        state="invited",
    )
    token = _issue_token(participant, room)
    session.add(participant)
    session.flush()
    return Invitation(participant, token)


def _new_room(
    session: Session,
    *,
    kind: str,
    site_id: int,
    patient_id: str | None,
    appointment_id: str | None,
    service_request_id: str | None,
    planned_start: datetime,
    duration_minutes: int,
    grace_minutes: int,
    created_by: int | None,
) -> Room:
    room = Room(
        id=secrets.token_hex(16),
        kind=kind,
        site_id=site_id,
        patient_id=patient_id,
        appointment_id=appointment_id,
        service_request_id=service_request_id,
        planned_start=as_utc(planned_start),
        duration_minutes=duration_minutes,
        grace_minutes=grace_minutes,
        status="planned",
        created_by=created_by,
    )
    session.add(room)
    session.flush()
    return room


def _patient_user(session: Session, patient_id: str) -> User | None:
    return session.scalar(
        select(User).where(User.patient_id == patient_id, User.role == "patient").order_by(User.id).limit(1)
    )


def create_visit_room(
    session: Session,
    principal: Principal,
    *,
    patient_id: str,
    appointment_id: str | None,
    planned_start: datetime,
    duration_minutes: int,
    grace_minutes: int = 5,
) -> NewRoom:
    """Create the room of a video visit: the calling doctor hosts, the patient waits in the lobby.

    The caller's access to the patient is checked by the view. Raises Forbidden for a
    role that does not hold calls, ValidationFailed for bad times, NotFound for an
    unknown patient or appointment.
    """
    if principal.role not in STAFF_CALL_ROLES:
        raise Forbidden(N_("Your role does not hold video calls."), code="ROLE_REQUIRED")
    check_schedule(planned_start, duration_minutes, grace_minutes, utcnow())
    site = _site(session, principal.site_id)
    patient_name = _patient_name(session, patient_id)
    if appointment_id is not None:
        store.read(session, "Appointment", appointment_id)
        if session.scalar(select(Room.id).where(Room.appointment_id == appointment_id)) is not None:
            raise Conflict(N_("This appointment already has a video call."), code="CALL_APPOINTMENT_HAS_ROOM")
    room = _new_room(
        session,
        kind="visit",
        site_id=site.id,
        patient_id=patient_id,
        appointment_id=appointment_id,
        service_request_id=None,
        planned_start=planned_start,
        duration_minutes=duration_minutes,
        grace_minutes=grace_minutes,
        created_by=principal.user_id,
    )
    host = add_participant(
        session,
        room,
        display_name=principal.full_name or principal.username,
        role="host",
        user_id=principal.user_id,
    )
    patient_user = _patient_user(session, patient_id)
    patient = add_participant(
        session,
        room,
        display_name=patient_name,
        role="patient",
        user_id=patient_user.id if patient_user else None,
        patient_id=patient_id,
        needs_admission=True,
    )
    publish(
        "telehealth.visit.scheduled",
        {
            "room_id": room.id,
            "site": site.code,
            "patient_id": patient_id,
            "planned_start": store.instant(as_utc(planned_start)),
        },
    )
    return NewRoom(room, [host, patient])


@dataclass(frozen=True)
class ConsultInput:
    """What a district doctor sends with a consult request."""

    patient_id: str
    reason: str
    summary: str
    to_site: str | None = None
    attachments: tuple[str, ...] = ()


def create_consult_request(
    session: Session, principal: Principal, consult: ConsultInput
) -> store.StoredResource:
    """Send a consult request (ServiceRequest, category teleconsultation) to a central site.

    The caller's access to the patient is checked by the view. Raises Forbidden for a
    caller who is not a doctor, ValidationFailed for a missing reason or summary or an
    unknown site or attachment.
    """
    if principal.role != "doctor":
        raise Forbidden(N_("Only a doctor can ask for a consultation."), code="ROLE_REQUIRED")
    errors: dict[str, str] = {}
    if not consult.reason.strip():
        errors["reason"] = N_("Say what the consultation is for.")
    if not consult.summary.strip():
        errors["summary"] = N_("Give a clinical summary.")
    query = select(Site).where(Site.kind == "central")
    if consult.to_site:
        query = select(Site).where(Site.code == consult.to_site)
    central = session.scalar(query.order_by(Site.id).limit(1))
    if central is None or central.id == principal.site_id:
        errors["to_site"] = N_("Choose another hospital to consult.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    assert central is not None
    own = _site(session, principal.site_id)
    for index, document in enumerate(consult.attachments):
        try:
            store.read(session, "DocumentReference", document)
        except (NotFound, Gone):
            raise ValidationFailed(
                fields={f"attachments[{index}]": N_("There is no such document.")}
            ) from None
    resource = fhir_mapping.consult_request(
        patient_id=consult.patient_id,
        requester_name=principal.full_name or principal.username,
        requester_site=_site_reference(own),
        performer_site=_site_reference(central),
        reason=consult.reason.strip(),
        summary=consult.summary.strip(),
        attachments=list(consult.attachments),
        authored=utcnow(),
    )
    resource["extension"] = [{"url": REQUESTING_USER_URL, "valueString": str(principal.user_id)}]
    stored = store.create(session, resource)
    _share_patient(session, consult.patient_id, central.id, "consult")
    publish(
        "telehealth.consult.requested",
        {"service_request_id": stored.id, "from_site": own.code, "to_site": central.code},
    )
    return stored


def _consult(session: Session, service_request_id: str) -> dict[str, Any]:
    try:
        resource = store.read(session, "ServiceRequest", service_request_id).resource
    except (NotFound, Gone):
        raise ConsultNotFound() from None
    codes = {
        coding.get("code")
        for category in resource.get("category") or []
        for coding in category.get("coding") or []
    }
    if fhir_mapping.TELECONSULTATION not in codes:
        raise ConsultNotFound()
    return resource


def _requesting_user(resource: dict[str, Any]) -> int | None:
    for extension in resource.get("extension") or []:
        if extension.get("url") == REQUESTING_USER_URL:
            try:
                return int(extension.get("valueString"))
            except (TypeError, ValueError):
                return None
    return None


def _performer_matches(resource: dict[str, Any], site: Site) -> bool:
    own = _site_reference(site)
    return any(
        performer.get("reference") == own.get("reference")
        if "reference" in own
        else performer.get("identifier") == own.get("identifier")
        for performer in resource.get("performer") or []
    )


def schedule_consult(
    session: Session,
    principal: Principal,
    service_request_id: str,
    *,
    specialist_user_id: int,
    planned_start: datetime,
    duration_minutes: int,
    grace_minutes: int = 5,
    include_patient: bool = False,
) -> NewRoom:
    """Assign a specialist and a time to a consult request and create its room.

    The requesting doctor and the specialist join directly; the patient, when invited,
    waits in the lobby. Raises Forbidden (audited) for a caller who is not staff of the
    consulted site, ConsultNotFound, ValidationFailed for a specialist who is not a
    doctor of that site or bad times, Conflict when the consult already has a room.
    """
    resource = _consult(session, service_request_id)
    site = _site(session, principal.site_id)
    if principal.role not in COORDINATOR_ROLES or not _performer_matches(resource, site):
        audit.record(
            "update", "ServiceRequest", service_request_id, outcome="denied", detail="not the consulted site"
        )
        raise Forbidden(
            N_("Only the consulted hospital can schedule this consultation."), code="CONSULT_NOT_YOURS"
        )
    if session.scalar(
        select(Room.id).where(Room.service_request_id == service_request_id, Room.status != "cancelled")
    ):
        raise Conflict(N_("This consultation is already scheduled."), code="CONSULT_ALREADY_SCHEDULED")
    specialist = session.get(User, specialist_user_id)
    if specialist is None or specialist.site_id != site.id or specialist.role not in SPECIALIST_ROLES:
        raise ValidationFailed(fields={"specialist_id": N_("Choose a doctor of your hospital.")})
    check_schedule(planned_start, duration_minutes, grace_minutes, utcnow())
    patient_id = str(resource["subject"]["reference"]).split("/", 1)[1]
    room = _new_room(
        session,
        kind="consult",
        site_id=site.id,
        patient_id=patient_id,
        appointment_id=None,
        service_request_id=service_request_id,
        planned_start=planned_start,
        duration_minutes=duration_minutes,
        grace_minutes=grace_minutes,
        created_by=principal.user_id,
    )
    invitations = []
    requester = session.get(User, _requesting_user(resource) or -1)
    if requester is not None:
        invitations.append(
            add_participant(
                session, room, display_name=requester.full_name, role="host", user_id=requester.id
            )
        )
    invitations.append(
        add_participant(
            session, room, display_name=specialist.full_name, role="specialist", user_id=specialist.id
        )
    )
    if include_patient:
        patient_user = _patient_user(session, patient_id)
        invitations.append(
            add_participant(
                session,
                room,
                display_name=_patient_name(session, patient_id),
                role="patient",
                user_id=patient_user.id if patient_user else None,
                patient_id=patient_id,
                needs_admission=True,
            )
        )
    updated = dict(resource)
    updated["performer"] = [*resource.get("performer", []), {"display": specialist.full_name}]
    updated["occurrenceDateTime"] = store.instant(as_utc(planned_start))
    store.update(session, "ServiceRequest", service_request_id, updated)
    requester_site = session.get(Site, requester.site_id) if requester is not None else None
    publish(
        "telehealth.consult.scheduled",
        {
            "service_request_id": service_request_id,
            "room_id": room.id,
            "planned_start": store.instant(as_utc(planned_start)),
            "sites": sorted({site.code, *([requester_site.code] if requester_site else [])}),
            "users": [i.participant.user_id for i in invitations if i.participant.user_id is not None],
        },
    )
    return NewRoom(room, invitations)


def get_room(session: Session, room_id: str) -> Room:
    """Return a room by id.

    Raises RoomNotFound.
    """
    room = session.get(Room, room_id) if re.fullmatch(r"[0-9a-f]{32}", room_id) else None
    if room is None:
        raise RoomNotFound()
    return room


def reissue_own_link(session: Session, principal: Principal, room: Room) -> Invitation:
    """Give a logged-in participant a fresh join token (the old one stops working).

    Raises Forbidden (audited) when the caller is not invited to the room, CallEnded
    for a call that is over.
    """
    participant = session.scalar(
        select(Participant).where(Participant.room_id == room.id, Participant.user_id == principal.user_id)
    )
    if participant is None or principal.user_id is None:
        audit.record("read", "TelehealthRoom", room.id, patient_id=room.patient_id, outcome="denied")
        raise Forbidden(N_("You are not invited to this call."), code="CALL_NOT_INVITED")
    _ensure_open(room, utcnow())
    return Invitation(participant, _issue_token(participant, room))


def participant_for_token(
    session: Session, token: str, principal: Principal | None = None
) -> tuple[Participant, Room]:
    """Find whose join token this is.

    Raises CallLinkInvalid (audited) for an unknown token, CallLinkExpired (audited) for
    an expired one, and CallLinkNotYours (audited) when a logged-in user presents a
    link that was issued to someone else.
    """
    participant = None
    if token and _TOKEN_SHAPE.match(token):
        participant = session.scalar(select(Participant).where(Participant.token_hash == hash_token(token)))
    if participant is None:
        audit.record("join", "TelehealthRoom", None, outcome="denied", detail="unknown call link")
        raise CallLinkInvalid()
    room = session.get(Room, participant.room_id)
    assert room is not None
    if as_utc(participant.token_expires_at) <= utcnow():
        audit.record(
            "join",
            "TelehealthRoom",
            room.id,
            patient_id=room.patient_id,
            outcome="denied",
            detail="expired call link",
        )
        raise CallLinkExpired()
    if principal is not None and principal.is_authenticated and principal.kind == "user":
        other_user = participant.user_id is not None and principal.user_id != participant.user_id
        other_patient = (
            principal.role == "patient"
            and participant.patient_id is not None
            and participant.patient_id != principal.patient_id
            and participant.user_id != principal.user_id
        )
        if other_user or other_patient:
            audit.record(
                "join",
                "TelehealthRoom",
                room.id,
                patient_id=room.patient_id,
                outcome="denied",
                detail="someone else's call link",
            )
            raise CallLinkNotYours()
    return participant, room


def _ensure_open(room: Room, now: datetime) -> None:
    if room.status in ("ended", "cancelled") or now >= room.hard_end:
        raise CallEnded()


def admitted(participant: Participant) -> bool:
    """Tell whether a participant may be in the call (staff always; a patient once admitted)."""
    return not participant.needs_admission or participant.admitted_at is not None


def stream_topics(participant: Participant, room: Room) -> list[str]:
    """Return the topics a participant's event stream carries.

    Raises CallDeclined for a declined participant, CallEnded for a call that is over.
    """
    if participant.state == "declined":
        raise CallDeclined()
    _ensure_open(room, utcnow())
    topics = [participant_topic(participant.id)]
    if admitted(participant):
        topics.append(room_topic(room.id))
    return topics


def describe_participant(participant: Participant) -> dict[str, Any]:
    """Describe a participant as the other participants see them."""
    return {
        "id": participant.id,
        "name": participant.display_name,
        "role": participant.role,
        "state": participant.state,
    }


def describe_room(room: Room, participants: list[Participant] | None = None) -> dict[str, Any]:
    """Describe a room for the API."""
    body: dict[str, Any] = {
        "id": room.id,
        "kind": room.kind,
        "status": room.status,
        "patient_id": room.patient_id,
        "appointment_id": room.appointment_id,
        "service_request_id": room.service_request_id,
        "encounter_id": room.encounter_id,
        "planned_start": store.instant(as_utc(room.planned_start)),
        "duration_minutes": room.duration_minutes,
        "grace_minutes": room.grace_minutes,
        "ends_at": store.instant(room.planned_end),
        "hard_end": store.instant(room.hard_end),
        "recording": room.recording_started_at is not None,
    }
    if participants is not None:
        body["participants"] = [describe_participant(p) for p in participants]
    return body


def room_participants(session: Session, room: Room) -> list[Participant]:
    """Return a room's participants in the order they were invited."""
    return list(
        session.scalars(select(Participant).where(Participant.room_id == room.id).order_by(Participant.id))
    )


def _open_encounter(session: Session, room: Room, now: datetime) -> None:
    site = session.get(Site, room.site_id)
    assert site is not None
    encounter = fhir_mapping.virtual_encounter(
        patient_id=room.patient_id,
        appointment_id=room.appointment_id,
        service_request_id=room.service_request_id,
        service_provider=_site_reference(site),
        started=now,
    )
    room.encounter_id = store.create(session, encounter).id


@dataclass
class JoinResult:
    """What a participant learns on joining: whether they wait, and who is already there."""

    state: str
    peers: list[Participant]


def join(session: Session, participant: Participant, room: Room) -> JoinResult:
    """Enter the call, or the lobby for a participant who must be admitted first.

    The first participant in the call opens the room and its Encounter (class virtual).
    Raises CallDeclined, CallEnded, CallTooEarly, RoomFull when four are already in the call.
    """
    now = utcnow()
    if participant.state == "declined":
        raise CallDeclined()
    _ensure_open(room, now)
    if now < as_utc(room.planned_start) - EARLY_JOIN:
        raise CallTooEarly()
    if not admitted(participant):
        if participant.state != "waiting":
            participant.state = "waiting"
            session.flush()
            publish(room_topic(room.id), {"type": "lobby", "waiting": _waiting(session, room)})
        audit.record(
            "join", "TelehealthRoom", room.id, patient_id=room.patient_id, detail="waiting in the lobby"
        )
        return JoinResult("waiting", [])
    others = [
        p
        for p in session.scalars(
            select(Participant).where(
                Participant.room_id == room.id,
                Participant.state == "in_call",
                Participant.id != participant.id,
            )
        )
    ]
    if participant.state != "in_call" and len(others) >= MAX_IN_CALL:
        audit.record(
            "join",
            "TelehealthRoom",
            room.id,
            patient_id=room.patient_id,
            outcome="denied",
            detail="room full",
        )
        raise RoomFull()
    if room.status == "planned":
        room.status = "open"
        room.opened_at = now
        _open_encounter(session, room, now)
    participant.state = "in_call"
    participant.joined_at = now
    participant.left_at = None
    session.flush()
    audit.record("join", "TelehealthRoom", room.id, patient_id=room.patient_id)
    publish(room_topic(room.id), {"type": "joined", "participant": describe_participant(participant)})
    return JoinResult("in_call", others)


def _waiting(session: Session, room: Room) -> list[dict[str, Any]]:
    return [
        describe_participant(p)
        for p in session.scalars(
            select(Participant)
            .where(Participant.room_id == room.id, Participant.state == "waiting")
            .order_by(Participant.id)
        )
    ]


def lobby(session: Session, host: Participant, room: Room) -> list[dict[str, Any]]:
    """Return who waits in the lobby.

    Raises NotHost unless the caller may admit people.
    """
    _ensure_host(host)
    return _waiting(session, room)


def _ensure_host(participant: Participant) -> None:
    if participant.needs_admission or participant.state != "in_call":
        raise NotHost()


LOBBY_ACTIONS = frozenset({"admit", "decline", "back"})


def lobby_action(session: Session, host: Participant, room: Room, target_id: int, action: str) -> Participant:
    """Admit or decline someone waiting, or send someone in the call back to the lobby.

    Raises NotHost, CallEnded, BadRequest for an unknown action, NotFound for someone
    not in this room, Conflict when the action does not fit their state.
    """
    _ensure_host(host)
    _ensure_open(room, utcnow())
    if action not in LOBBY_ACTIONS:
        raise ValidationFailed(fields={"action": N_("Use admit, decline or back.")})
    target = session.get(Participant, target_id)
    if target is None or target.room_id != room.id or target.id == host.id:
        raise NotFound(N_("There is no such participant in this call."), code="CALL_PARTICIPANT_NOT_FOUND")
    now = utcnow()
    if action == "admit":
        if target.state != "waiting":
            raise Conflict(N_("This person is not waiting."), code="CALL_NOT_WAITING")
        target.admitted_at = now
        target.state = "invited"
    elif action == "decline":
        if target.state != "waiting":
            raise Conflict(N_("This person is not waiting."), code="CALL_NOT_WAITING")
        target.state = "declined"
    else:
        if target.state != "in_call" or not target.needs_admission:
            raise Conflict(N_("Only a patient in the call can be sent back."), code="CALL_NOT_IN_CALL")
        target.state = "waiting"
        target.admitted_at = None
        publish(room_topic(room.id), {"type": "left", "participant": describe_participant(target)})
    session.flush()
    audit.record(
        f"lobby-{action}",
        "TelehealthRoom",
        room.id,
        patient_id=room.patient_id,
        detail=f"participant {target.id}",
    )
    publish(participant_topic(target.id), {"type": "lobby", "decision": action, "state": target.state})
    publish(room_topic(room.id), {"type": "lobby", "waiting": _waiting(session, room)})
    return target


def leave(session: Session, participant: Participant, room: Room) -> None:
    """Leave the call (a later join with the same link brings the participant back)."""
    if participant.state in ("in_call", "waiting"):
        participant.state = "left"
        participant.left_at = utcnow()
        session.flush()
        audit.record("leave", "TelehealthRoom", room.id, patient_id=room.patient_id)
        publish(room_topic(room.id), {"type": "left", "participant": describe_participant(participant)})


def end_room(session: Session, room: Room, reason: str = "ended") -> bool:
    """End a call: everyone is told, the Encounter is finished; return whether it was open."""
    if room.status in ("ended", "cancelled"):
        return False
    now = utcnow()
    room.status = "ended"
    room.ended_at = now
    for participant in room_participants(session, room):
        if participant.state in ("in_call", "waiting"):
            participant.state = "left"
            participant.left_at = now
    if room.encounter_id:
        encounter = store.read(session, "Encounter", room.encounter_id).resource
        store.update(session, "Encounter", room.encounter_id, fhir_mapping.finished_encounter(encounter, now))
    session.flush()
    publish(room_topic(room.id), {"type": "ended", "reason": reason})
    for participant in room_participants(session, room):
        publish(participant_topic(participant.id), {"type": "ended", "reason": reason})
    return True


def end_by_host(session: Session, host: Participant, room: Room) -> None:
    """End the call for everyone.

    Raises NotHost.
    """
    _ensure_host(host)
    if end_room(session, room, "host"):
        audit.record("end", "TelehealthRoom", room.id, patient_id=room.patient_id)


def end_overdue_rooms(session: Session) -> list[str]:
    """End every call whose grace period has run out; return their ids (idempotent)."""
    return [room.id for room in overdue_rooms(session) if end_room(session, room, "time")]


def _bad_signal(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        N_("This signalling message is not valid."), code="CALL_BAD_SIGNAL", fields={field_name: message}
    )


@dataclass(frozen=True)
class Signal:
    """A validated signalling message for one other participant."""

    kind: str
    to: int
    sdp: str | None = None
    candidate: dict[str, Any] | None = None
    ref: str | None = None


_SIGNAL_REF = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_signal(body: Any) -> Signal:
    """Check a signalling message's shape.

    Raises ValidationFailed naming the field for anything but an offer or answer with an
    SDP, or an ICE candidate (``null`` marks the end of candidates), addressed to a
    participant id. ``ref``, optional, names the connection and offer a message belongs
    to, so that a page can tell a stale answer or candidate from a current one.
    """
    if not isinstance(body, dict):
        raise _bad_signal("type", N_("Send a JSON object."))
    kind = body.get("type")
    if kind not in SIGNAL_KINDS:
        raise _bad_signal("type", N_("Use offer, answer or candidate."))
    to = body.get("to")
    if not isinstance(to, int) or isinstance(to, bool) or to <= 0:
        raise _bad_signal("to", N_("Name the participant this message is for."))
    ref = body.get("ref")
    if ref is not None and (not isinstance(ref, str) or not _SIGNAL_REF.match(ref)):
        raise _bad_signal("ref", N_("Use up to 64 letters, digits, dots, dashes or underscores."))
    if kind in ("offer", "answer"):
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
            raise _bad_signal("sdp", N_("This is not a session description."))
        return Signal(kind, to, sdp=sdp, ref=ref)
    candidate = body.get("candidate")
    if candidate is None:
        return Signal(kind, to, candidate=None, ref=ref)
    if not isinstance(candidate, dict):
        raise _bad_signal("candidate", N_("This is not an ICE candidate."))
    line = candidate.get("candidate")
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    if (
        not isinstance(line, str)
        or len(line) > MAX_CANDIDATE_CHARS
        or (line and not line.startswith("candidate:"))
        or not (mid is None or (isinstance(mid, str) and len(mid) <= 64))
        or not (index is None or (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 64))
    ):
        raise _bad_signal("candidate", N_("This is not an ICE candidate."))
    return Signal(kind, to, candidate={"candidate": line, "sdpMid": mid, "sdpMLineIndex": index}, ref=ref)


def relay_signal(session: Session, sender: Participant, room: Room, signal: Signal) -> None:
    """Pass a signalling message to another participant of the same call.

    Raises NotAdmitted when the sender is not in the call, CallEnded once the call is
    over, and Forbidden (audited) when the addressee is not in this call.
    """
    _ensure_open(room, utcnow())
    if sender.state != "in_call" or not admitted(sender):
        raise NotAdmitted()
    target = session.get(Participant, signal.to)
    if target is None or target.room_id != room.id or target.id == sender.id or target.state != "in_call":
        audit.record(
            "signal", "TelehealthRoom", room.id, outcome="denied", detail="addressee not in this call"
        )
        raise Forbidden(N_("That participant is not in this call."), code="CALL_PEER_NOT_IN_CALL")
    data: dict[str, Any] = {
        "type": "signal",
        "kind": signal.kind,
        "from": sender.id,
        "name": sender.display_name,
    }
    if signal.sdp is not None:
        data["sdp"] = signal.sdp
    if signal.kind == "candidate":
        data["candidate"] = signal.candidate
    if signal.ref is not None:
        data["ref"] = signal.ref
    publish(participant_topic(target.id), data)


def ice_servers(
    settings: Settings, participant_id: int, until: datetime, now: float | None = None
) -> list[dict[str, Any]]:
    """Return the ICE servers for a participant, with TURN credentials valid until ``until``.

    TURN credentials follow coturn's shared-secret REST scheme (``use-auth-secret``):
    the username is ``<unix expiry>:<participant>`` and the password the base64
    HMAC-SHA1 of that username under the shared secret. TURN URLs are left out when no
    secret is configured, since a browser refuses them without credentials.
    """
    urls = [u for u in re.split(r"[\s,]+", settings.ice_servers or "") if u]
    stun = [u for u in urls if u.startswith(("stun:", "stuns:"))]
    turn = [u for u in urls if u.startswith(("turn:", "turns:"))]
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": stun})
    if turn and settings.turn_secret:
        expiry = int(until.timestamp())
        if now is not None:
            expiry = max(expiry, int(now) + 60)
        username = f"{expiry}:vetinh-{participant_id}"
        digest = hmac.new(
            settings.turn_secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1
        ).digest()
        servers.append(
            {"urls": turn, "username": username, "credential": base64.b64encode(digest).decode("ascii")}
        )
    return servers


def turn_credentials_until(room: Room) -> datetime:
    """Return when a participant's TURN credentials stop working: at the call's hard end."""
    return room.hard_end


def server_time() -> float:
    """Return the server's clock, so a browser can correct its countdown."""
    return time.time()


def _ensure_in_call(participant: Participant, room: Room) -> None:
    _ensure_open(room, utcnow())
    if participant.state != "in_call":
        raise NotAdmitted()


def post_chat(session: Session, participant: Participant, room: Room, text: str) -> ChatMessage:
    """Add a chat line to the call and tell everyone in it.

    Raises NotAdmitted, CallEnded, ValidationFailed for an empty or too long message.
    """
    _ensure_in_call(participant, room)
    text = text.strip()
    if not text or len(text) > MAX_CHAT_CHARS:
        raise ValidationFailed(fields={"text": N_("Write between 1 and 4000 characters.")})
    message = ChatMessage(room_id=room.id, participant_id=participant.id, body=text)
    session.add(message)
    session.flush()
    # Only "look again": the text is read from the chat endpoint, which checks admission,
    # so a stream opened before someone was sent back to the lobby carries no chat.
    publish(room_topic(room.id), {"type": "chat", "id": message.id})
    return message


def share_file(
    session: Session, participant: Participant, room: Room, filename: str, content_type: str, data: bytes
) -> ChatMessage:
    """Keep a file shared in the call as a DocumentReference and announce it in the chat.

    Raises NotAdmitted, CallEnded, ValidationFailed for an empty file, PayloadTooLarge
    over 5 MB.
    """
    from his.errors import PayloadTooLarge

    _ensure_in_call(participant, room)
    if not data:
        raise ValidationFailed(fields={"file": N_("The file is empty.")})
    if len(data) > MAX_FILE_BYTES:
        raise PayloadTooLarge(N_("Files shared in a call are limited to 5 MB."), code="CALL_FILE_TOO_LARGE")
    name = re.sub(r"[\x00-\x1f/\\]", "_", filename or "file")[:200]
    content_type = (
        content_type if re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type or "") else "application/octet-stream"
    )
    document = store.create(
        session,
        fhir_mapping.shared_file(
            patient_id=room.patient_id,
            encounter_id=room.encounter_id,
            author_name=participant.display_name,
            filename=name,
            content_type=content_type,
            data=data,
            created=utcnow(),
        ),
    )
    message = ChatMessage(
        room_id=room.id,
        participant_id=participant.id,
        body="",
        document_reference_id=document.id,
        filename=name,
        content_type=content_type,
    )
    session.add(message)
    session.flush()
    audit.record("create", "DocumentReference", document.id, patient_id=room.patient_id)
    # Only "look again": the text is read from the chat endpoint, which checks admission,
    # so a stream opened before someone was sent back to the lobby carries no chat.
    publish(room_topic(room.id), {"type": "chat", "id": message.id})
    return message


def shared_file_content(
    session: Session, participant: Participant, room: Room, message_id: int
) -> tuple[str, str, bytes]:
    """Return a file shared in this call: its name, media type and bytes.

    Raises NotAdmitted, NotFound for a message of another call or without a file.
    """
    if not admitted(participant):
        raise NotAdmitted()
    message = session.get(ChatMessage, message_id)
    if message is None or message.room_id != room.id or message.document_reference_id is None:
        raise NotFound(N_("There is no such file in this call."), code="CALL_FILE_NOT_FOUND")
    document = store.read(session, "DocumentReference", message.document_reference_id).resource
    attachment = document["content"][0]["attachment"]
    audit.record("read", "DocumentReference", message.document_reference_id, patient_id=room.patient_id)
    return (
        str(message.filename or "file"),
        str(attachment.get("contentType") or "application/octet-stream"),
        base64.b64decode(attachment.get("data") or ""),
    )


def describe_message(message: ChatMessage, sender: Participant) -> dict[str, Any]:
    """Describe a chat line for the call page."""
    body: dict[str, Any] = {
        "id": message.id,
        "from": sender.id,
        "name": sender.display_name,
        "text": message.body,
        "sent_at": store.instant(as_utc(message.sent_at)),
    }
    if message.document_reference_id:
        body["file"] = {
            "name": message.filename,
            "type": message.content_type,
            "document": message.document_reference_id,
        }
    return body


def chat_history(session: Session, participant: Participant, room: Room) -> list[dict[str, Any]]:
    """Return the call's chat so far.

    Raises NotAdmitted for someone still in the lobby.
    """
    if not admitted(participant):
        raise NotAdmitted()
    senders = {p.id: p for p in room_participants(session, room)}
    return [
        describe_message(m, senders[m.participant_id])
        for m in session.scalars(
            select(ChatMessage).where(ChatMessage.room_id == room.id).order_by(ChatMessage.id)
        )
    ]


def give_consent(session: Session, participant: Participant, room: Room, given: bool) -> Consent:
    """Record (or withdraw) a participant's consent to recording, with the time.

    Raises NotAdmitted for someone still in the lobby.
    """
    if not admitted(participant):
        raise NotAdmitted()
    consent = session.scalar(
        select(Consent).where(Consent.participant_id == participant.id, Consent.kind == "recording")
    )
    now = utcnow()
    if consent is None:
        consent = Consent(room_id=room.id, participant_id=participant.id, kind="recording", given_at=now)
        session.add(consent)
    if given:
        consent.given_at = now
        consent.withdrawn_at = None
    else:
        consent.withdrawn_at = now
    session.flush()
    audit.record(
        "consent" if given else "consent-withdrawn", "TelehealthRoom", room.id, patient_id=room.patient_id
    )
    publish(room_topic(room.id), {"type": "consent", "participant": participant.id, "given": given})
    return consent


def everyone_consented(session: Session, room: Room) -> bool:
    """Tell whether every participant in the call consents to recording."""
    present = [p for p in room_participants(session, room) if p.state == "in_call"]
    consenting = set(
        session.scalars(
            select(Consent.participant_id).where(Consent.room_id == room.id, Consent.withdrawn_at.is_(None))
        )
    )
    return bool(present) and all(p.id in consenting for p in present)


def write_consult_note(
    session: Session, principal: Principal, room: Room, title: str, text: str
) -> store.StoredResource:
    """Write the consult note (Composition) of a call and send the outcome to the requesting site.

    Raises Forbidden (audited) unless the caller is a staff participant of the call,
    ValidationFailed for an empty note.
    """
    participant = session.scalar(
        select(Participant).where(Participant.room_id == room.id, Participant.user_id == principal.user_id)
    )
    if participant is None or principal.user_id is None or participant.needs_admission:
        audit.record("create", "Composition", None, patient_id=room.patient_id, outcome="denied")
        raise Forbidden(N_("Only a doctor of this call can write its note."), code="CALL_NOTE_NOT_ALLOWED")
    errors = {}
    if not title.strip():
        errors["title"] = N_("Give the note a title.")
    if not text.strip():
        errors["text"] = N_("Write the note.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    stored = store.create(
        session,
        fhir_mapping.consult_note(
            patient_id=room.patient_id,
            encounter_id=room.encounter_id,
            author_name=participant.display_name,
            title=title.strip(),
            text=text.strip(),
            written=utcnow(),
        ),
    )
    audit.record("create", "Composition", stored.id, patient_id=room.patient_id)
    if room.service_request_id:
        request = store.read(session, "ServiceRequest", room.service_request_id).resource
        request["status"] = "completed"
        store.update(session, "ServiceRequest", room.service_request_id, request)
        publish(
            "telehealth.consult.completed",
            {"service_request_id": room.service_request_id, "composition_id": stored.id, "room_id": room.id},
        )
    return stored


def parse_token(raw: str | None) -> str:
    """Return the join token a request carries.

    Raises CallLinkInvalid when there is none.
    """
    token = (raw or "").strip()
    if not token:
        raise CallLinkInvalid()
    return token


def bad_request(message: str, field_name: str) -> BadRequest:
    """Build a 400 that names the field at fault."""
    return BadRequest(message, fields={field_name: message})


def consented(session: Session, participant: Participant) -> bool:
    """Tell whether a participant consents to recording now."""
    return (
        session.scalar(
            select(Consent.id).where(
                Consent.participant_id == participant.id,
                Consent.kind == "recording",
                Consent.withdrawn_at.is_(None),
            )
        )
        is not None
    )


def start_recording(session: Session, host: Participant, room: Room) -> None:
    """Start recording the call: everyone's browser is asked to send its media to the recorder.

    Raises NotHost, CallEnded, Conflict when it is already recording, and
    RecordingRefused (audited) unless everyone in the call consented.
    """
    _ensure_host(host)
    _ensure_open(room, utcnow())
    if room.recording_started_at is not None:
        raise Conflict(N_("This call is already being recorded."), code="RECORDING_RUNNING")
    if not everyone_consented(session, room):
        audit.record(
            "record",
            "TelehealthRoom",
            room.id,
            patient_id=room.patient_id,
            outcome="denied",
            detail="consent missing",
        )
        raise RecordingRefused()
    room.recording_started_at = utcnow()
    session.flush()
    audit.record("record", "TelehealthRoom", room.id, patient_id=room.patient_id)
    publish(room_topic(room.id), {"type": "recording", "state": "on"})


def recording_target(session: Session, participant: Participant, room: Room) -> Recording:
    """Name the recording of one participant's media; the caller adds it once the recorder runs.

    Raises NotRecording, NotAdmitted for someone not in the call, RecordingRefused for
    someone who has not consented.
    """
    if room.recording_started_at is None:
        raise NotRecording()
    _ensure_in_call(participant, room)
    if not consented(session, participant):
        raise RecordingRefused()
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    return Recording(
        room_id=room.id,
        participant_id=participant.id,
        path=f"recordings/{room.id}/{participant.id}-{stamp}-{secrets.token_hex(4)}.mkv",
        started_at=utcnow(),
    )


def recording_key(recording: Recording) -> str:
    """Name a recording for the media service: the room first, so a room's recordings stop together."""
    return f"{recording.room_id}:{recording.path.rsplit('/', 1)[-1].removesuffix('.mkv')}"


def finish_recording(
    session: Session, room: Room, written: dict[str, dict[str, int]], data_dir: str, reason: str
) -> list[str]:
    """Close the call's recordings the media service finished; link each file to the Encounter.

    ``written`` maps recording keys to the frame counts the media service reports. Returns
    the ids of the DocumentReferences created.
    """
    from pathlib import Path

    if room.recording_started_at is None:
        return []
    now = utcnow()
    documents = []
    open_recordings = session.scalars(
        select(Recording).where(Recording.room_id == room.id, Recording.ended_at.is_(None))
    )
    names = {p.id: p.display_name for p in room_participants(session, room)}
    for recording in open_recordings:
        recording.ended_at = now
        counts = written.get(recording_key(recording), {})
        recording.video_frames = counts.get("video_frames")
        recording.audio_frames = counts.get("audio_frames")
        path = Path(data_dir) / recording.path
        if not path.is_file():
            continue
        data_hash = hashlib.sha1()  # noqa: S324 - FHIR Attachment.hash is SHA-1 by definition
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                data_hash.update(block)
        recording.size_bytes = path.stat().st_size
        document = store.create(
            session,
            fhir_mapping.recording_document(
                patient_id=room.patient_id,
                encounter_id=room.encounter_id,
                participant_name=names.get(recording.participant_id, ""),
                url=f"/api/v1/telehealth/recordings/{recording.id}",
                size=recording.size_bytes,
                sha1=data_hash.digest(),
                started=as_utc(recording.started_at),
                ended=now,
            ),
        )
        recording.document_reference_id = document.id
        documents.append(document.id)
    room.recording_started_at = None
    session.flush()
    audit.record("record-stop", "TelehealthRoom", room.id, patient_id=room.patient_id, detail=reason)
    publish(room_topic(room.id), {"type": "recording", "state": "off", "reason": reason})
    return documents


def overdue_rooms(session: Session) -> list[Room]:
    """Return the calls whose grace period has run out but are not ended yet."""
    now = utcnow()
    return [
        room
        for room in session.scalars(select(Room).where(Room.status.in_(("planned", "open"))))
        if room.hard_end <= now
    ]


def readable_recording(session: Session, principal: Principal, recording_id: int) -> tuple[Recording, Room]:
    """Return a finished recording a staff member of the call's site (or its consult) may watch.

    Raises NotFound, Forbidden (audited).
    """
    recording = session.get(Recording, recording_id)
    if recording is None or recording.ended_at is None:
        raise NotFound(N_("There is no such recording."), code="RECORDING_NOT_FOUND")
    room = session.get(Room, recording.room_id)
    assert room is not None
    invited = session.scalar(
        select(Participant.id).where(Participant.room_id == room.id, Participant.user_id == principal.user_id)
    )
    if not principal.is_staff or (principal.site_id != room.site_id and invited is None):
        audit.record(
            "read", "TelehealthRecording", str(recording.id), patient_id=room.patient_id, outcome="denied"
        )
        raise Forbidden(N_("You may not watch this recording."), code="RECORDING_ACCESS_DENIED")
    audit.record("read", "TelehealthRecording", str(recording.id), patient_id=room.patient_id)
    return recording, room
