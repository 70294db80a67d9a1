"""Who may enter a call, and what the server refuses: other people's, expired or forged links,
a fifth person, malformed or misaddressed signalling, a finished call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from his.accounts import hash_password
from his.db import get_database
from his.models import AuditRecord, User
from telehealth.models import Participant, Room
from tests.conftest import TEST_PASSWORD, csrf_token, login
from tests.telehealth.conftest import CallPeople, bearer, call_headers, link_of, random_token

VALID_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def join(client: FlaskClient, token: str) -> Any:
    return client.post("/api/v1/telehealth/call/join", headers=call_headers(token))


def denied_joins(app: Flask) -> list[tuple[str | None, str | None]]:
    with get_database(app).session_scope() as session:
        rows = session.execute(
            select(AuditRecord.entity_id, AuditRecord.detail).where(
                AuditRecord.action == "join", AuditRecord.outcome == "denied"
            )
        )
        return [(entity, detail) for entity, detail in rows]


def test_a_forged_link_is_refused_and_audited(
    app: Flask, client: FlaskClient, visit_room: dict[str, Any]
) -> None:
    response = join(client, random_token())
    missing = client.post("/api/v1/telehealth/call/join")
    tokens = {link["token"] for link in visit_room["links"]}
    with get_database(app).session_scope() as session:
        stored = set(session.scalars(select(Participant.token_hash)))

    # Only the hashes of the links are kept: a copy of the table opens no call.
    assert len(stored) == 2
    assert not tokens & stored

    assert response.status_code == 403
    assert response.get_json()["code"] == "CALL_LINK_INVALID"
    assert missing.status_code == 403
    assert (None, "unknown call link") in denied_joins(app)


def test_a_logged_in_patient_enters_only_with_their_own_link(
    app: Flask, client: FlaskClient, visit_room: dict[str, Any], people: CallPeople
) -> None:
    other = app.test_client()
    with get_database(app).session_scope() as session:
        session.add(
            User(
                username="other.patient",
                password_hash=hash_password(TEST_PASSWORD),
                full_name="Người Khác",
                role="patient",
                patient_id="someone-else",
            )
        )
    login(other, "other.patient")
    login(client, people.patient_user.username)
    link = call_headers(link_of(visit_room, "patient"))

    stolen = other.post(
        "/api/v1/telehealth/call/join", headers={**link, "X-CSRFToken": csrf_token(other, "/")}
    )
    own = client.post(
        "/api/v1/telehealth/call/join", headers={**link, "X-CSRFToken": csrf_token(client, "/")}
    )

    assert stolen.status_code == 403
    assert stolen.get_json()["code"] == "CALL_LINK_NOT_YOURS"
    assert (visit_room["id"], "someone else's call link") in denied_joins(app)
    assert own.status_code == 200
    assert own.get_json()["state"] == "waiting"


def test_an_expired_link_is_refused_and_audited(
    app: Flask, client: FlaskClient, visit_room: dict[str, Any]
) -> None:
    token = link_of(visit_room, "host")
    with get_database(app).session_scope() as session:
        session.execute(update(Participant).values(token_expires_at=datetime.now(UTC) - timedelta(seconds=1)))

    response = join(client, token)

    assert response.status_code == 403
    assert response.get_json()["code"] == "CALL_LINK_EXPIRED"
    assert (visit_room["id"], "expired call link") in denied_joins(app)


def test_a_fifth_person_cannot_join_until_someone_leaves(
    client: FlaskClient, visit_room: dict[str, Any], people: CallPeople
) -> None:
    room_id = visit_room["id"]
    tokens = [link_of(visit_room, "host")]
    for name in ("Khách 1", "Khách 2", "Khách 3", "Khách 4"):
        invited = client.post(
            f"/api/v1/telehealth/rooms/{room_id}/participants",
            json={"name": name, "wait_in_lobby": False},
            headers=bearer(people.doctor_token),
        )
        assert invited.status_code == 201, invited.get_json()
        tokens.append(invited.get_json()["links"][0]["token"])
    seventh = client.post(
        f"/api/v1/telehealth/rooms/{room_id}/participants",
        json={"name": "Khách 5"},
        headers=bearer(people.doctor_token),
    )
    host = tokens[0]
    assert join(client, host).status_code == 200
    for guest in tokens[1:4]:
        assert join(client, guest).status_code == 200
        waiting = client.get("/api/v1/telehealth/call/lobby", headers=call_headers(host)).get_json()[
            "waiting"
        ]
        decision = client.post(
            "/api/v1/telehealth/call/lobby",
            json={"participant": waiting[0]["id"], "action": "admit"},
            headers=call_headers(host),
        )
        assert decision.status_code == 200
        assert join(client, guest).get_json()["state"] == "in_call"

    fifth = tokens[4]
    assert join(client, fifth).get_json()["state"] == "waiting"
    waiting = client.get("/api/v1/telehealth/call/lobby", headers=call_headers(host)).get_json()["waiting"]
    client.post(
        "/api/v1/telehealth/call/lobby",
        json={"participant": waiting[0]["id"], "action": "admit"},
        headers=call_headers(host),
    )
    refused = join(client, fifth)
    client.post("/api/v1/telehealth/call/leave", headers=call_headers(tokens[1]))
    later = join(client, fifth)

    assert seventh.status_code == 409  # six invitations at most
    assert refused.status_code == 409
    assert refused.get_json()["code"] == "CALL_ROOM_FULL"
    assert later.status_code == 200
    assert later.get_json()["state"] == "in_call"
    assert len(later.get_json()["peers"]) == 3


@pytest.fixture
def in_call(client: FlaskClient, consult_room: dict[str, Any]) -> tuple[str, str, int, int]:
    """Put the requesting doctor and the specialist in the call; return tokens and ids."""
    host, specialist = link_of(consult_room, "host"), link_of(consult_room, "specialist")
    host_id = join(client, host).get_json()["participant"]["id"]
    specialist_id = join(client, specialist).get_json()["participant"]["id"]
    return host, specialist, host_id, specialist_id


MALFORMED = [
    ({"type": "hello", "to": 2, "sdp": VALID_SDP}, "type"),
    ({"type": "offer", "sdp": VALID_SDP}, "to"),
    ({"type": "offer", "to": "2", "sdp": VALID_SDP}, "to"),
    ({"type": "offer", "to": True, "sdp": VALID_SDP}, "to"),
    ({"type": "offer", "to": 2}, "sdp"),
    ({"type": "answer", "to": 2, "sdp": "<script>alert(1)</script>"}, "sdp"),
    ({"type": "offer", "to": 2, "sdp": "v=0\r\n" + "a" * 100_001}, "sdp"),
    ({"type": "candidate", "to": 2, "candidate": "candidate:1 1 udp"}, "candidate"),
    ({"type": "candidate", "to": 2, "candidate": {"candidate": "rm -rf /", "sdpMid": "0"}}, "candidate"),
    (
        {"type": "candidate", "to": 2, "candidate": {"candidate": "candidate:1", "sdpMLineIndex": -1}},
        "candidate",
    ),
    ({"type": "offer", "to": 2, "sdp": VALID_SDP, "ref": "<img src=x>"}, "ref"),
    ({"type": "candidate", "to": 2, "candidate": None, "ref": 7}, "ref"),
    ({"type": "answer", "to": 2, "sdp": VALID_SDP, "ref": "a" * 65}, "ref"),
]


def test_malformed_signalling_is_refused_naming_the_field(
    client: FlaskClient, in_call: tuple[str, str, int, int]
) -> None:
    host, _specialist, _host_id, specialist_id = in_call
    answers = []
    for body, _field in MALFORMED:
        addressed = {**body, "to": specialist_id} if body.get("to") == 2 else body
        response = client.post("/api/v1/telehealth/call/signal", json=addressed, headers=call_headers(host))
        answers.append(
            (response.status_code, response.get_json()["code"], sorted(response.get_json()["fields"]))
        )

    not_json = client.post(
        "/api/v1/telehealth/call/signal",
        data="type=offer",
        headers={**call_headers(host), "Content-Type": "text/plain"},
    )
    listed = client.post("/api/v1/telehealth/call/signal", json=[1, 2, 3], headers=call_headers(host))

    assert answers == [(422, "CALL_BAD_SIGNAL", [field]) for _body, field in MALFORMED]
    assert not_json.status_code == 415
    assert listed.status_code == 400


def test_signalling_from_or_to_someone_outside_the_call_is_refused(
    client: FlaskClient, in_call: tuple[str, str, int, int], visit_room: dict[str, Any]
) -> None:
    host, _specialist, _host_id, specialist_id = in_call
    outsider_host = link_of(visit_room, "host")
    join(client, outsider_host)
    waiting_patient = link_of(visit_room, "patient")
    join(client, waiting_patient)
    other_room_host_id = visit_room["links"][0]["participant_id"]
    offer = {"type": "offer", "sdp": VALID_SDP}

    forged = client.post(
        "/api/v1/telehealth/call/signal",
        json={**offer, "to": specialist_id},
        headers=call_headers(random_token()),
    )
    across_rooms = client.post(
        "/api/v1/telehealth/call/signal",
        json={**offer, "to": specialist_id},
        headers=call_headers(outsider_host),
    )
    to_other_room = client.post(
        "/api/v1/telehealth/call/signal", json={**offer, "to": other_room_host_id}, headers=call_headers(host)
    )
    from_lobby = client.post(
        "/api/v1/telehealth/call/signal",
        json={**offer, "to": other_room_host_id},
        headers=call_headers(waiting_patient),
    )
    to_self = client.post(
        "/api/v1/telehealth/call/signal", json={**offer, "to": in_call[2]}, headers=call_headers(host)
    )
    good = client.post(
        "/api/v1/telehealth/call/signal", json={**offer, "to": specialist_id}, headers=call_headers(host)
    )

    assert forged.status_code == 403
    assert across_rooms.status_code == 403
    assert across_rooms.get_json()["code"] == "CALL_PEER_NOT_IN_CALL"
    assert to_other_room.status_code == 403
    assert from_lobby.status_code == 403
    assert from_lobby.get_json()["code"] == "CALL_NOT_ADMITTED"
    assert to_self.status_code == 403
    assert good.status_code == 202


def test_a_waiting_patient_sees_neither_chat_nor_call_events(
    client: FlaskClient, visit_room: dict[str, Any]
) -> None:
    host, patient = link_of(visit_room, "host"), link_of(visit_room, "patient")
    join(client, host)
    join(client, patient)

    chat = client.get("/api/v1/telehealth/call/chat", headers=call_headers(patient))
    admit_self = client.post(
        "/api/v1/telehealth/call/lobby",
        json={"participant": visit_room["links"][1]["participant_id"], "action": "admit"},
        headers=call_headers(patient),
    )

    assert chat.status_code == 403
    assert admit_self.status_code == 403
    assert admit_self.get_json()["code"] == "CALL_NOT_HOST"


def test_a_patient_sent_back_waits_again_and_once_declined_cannot_come_back(
    client: FlaskClient, visit_room: dict[str, Any]
) -> None:
    host, patient = link_of(visit_room, "host"), link_of(visit_room, "patient")
    patient_id = visit_room["links"][1]["participant_id"]
    join(client, host)
    join(client, patient)

    def decide(action: str) -> Any:
        return client.post(
            "/api/v1/telehealth/call/lobby",
            json={"participant": patient_id, "action": action},
            headers=call_headers(host),
        )

    decide("admit")
    admitted = join(client, patient).get_json()["state"]
    back = decide("back")
    waiting = join(client, patient).get_json()["state"]
    declined = decide("decline")
    again = join(client, patient)
    stream = client.get("/api/v1/telehealth/call/events", headers=call_headers(patient))

    assert admitted == "in_call"
    assert back.status_code == 200
    assert waiting == "waiting"
    assert declined.get_json()["state"] == "declined"
    assert again.status_code == 403
    assert again.get_json()["code"] == "CALL_DECLINED"
    assert stream.status_code == 403


def test_a_finished_call_cannot_be_joined(
    app: Flask, client: FlaskClient, in_call: tuple[str, str, int, int]
) -> None:
    host, specialist, _host_id, specialist_id = in_call

    ended = client.post("/api/v1/telehealth/call/end", headers=call_headers(host))
    again = join(client, specialist)
    signal = client.post(
        "/api/v1/telehealth/call/signal",
        json={"type": "offer", "to": specialist_id, "sdp": VALID_SDP},
        headers=call_headers(host),
    )

    assert ended.get_json()["status"] == "ended"
    assert again.status_code == 410
    assert again.get_json()["code"] == "CALL_ENDED"
    assert signal.status_code == 410


def test_only_the_consulted_site_schedules_a_consult(
    client: FlaskClient, people: CallPeople, make_token: Any
) -> None:
    asked = client.post(
        "/api/v1/telehealth/consults",
        json={"patient_id": people.patient_id, "reason": "Hội chẩn", "summary": "Tóm tắt"},
        headers=bearer(people.doctor_token),
    ).get_json()

    by_district = client.post(
        f"/api/v1/telehealth/consults/{asked['id']}/schedule",
        json={"specialist_id": people.specialist.id, "planned_start": datetime.now(UTC).isoformat()},
        headers=bearer(people.doctor_token),
    )
    wrong_specialist = client.post(
        f"/api/v1/telehealth/consults/{asked['id']}/schedule",
        json={"specialist_id": people.doctor.id, "planned_start": datetime.now(UTC).isoformat()},
        headers=bearer(people.coordinator_token),
    )

    assert by_district.status_code == 403
    assert wrong_specialist.status_code == 422
    assert "specialist_id" in wrong_specialist.get_json()["fields"]


def test_rooms_refuse_bad_times_and_unknown_patients(client: FlaskClient, people: CallPeople) -> None:
    past = client.post(
        "/api/v1/telehealth/rooms",
        json={
            "patient_id": people.patient_id,
            "planned_start": (datetime.now(UTC) - timedelta(hours=3)).isoformat(),
            "duration_minutes": 1000,
        },
        headers=bearer(people.doctor_token),
    )
    naive = client.post(
        "/api/v1/telehealth/rooms",
        json={"patient_id": people.patient_id, "planned_start": "2026-11-23T10:00:00"},
        headers=bearer(people.doctor_token),
    )
    stranger = client.post(
        "/api/v1/telehealth/rooms",
        json={"patient_id": "not-a-patient", "planned_start": datetime.now(UTC).isoformat()},
        headers=bearer(people.doctor_token),
    )

    assert past.status_code == 422
    assert "duration_minutes" in past.get_json()["fields"]
    assert naive.status_code == 422
    assert "planned_start" in naive.get_json()["fields"]
    assert stranger.status_code == 403


def test_overdue_calls_are_ended_by_the_job(
    app: Flask, client: FlaskClient, in_call: tuple[str, str, int, int]
) -> None:
    from his import events, jobs

    host, _specialist, _host_id, specialist_id = in_call
    with get_database(app).session_scope() as session:
        session.execute(update(Room).values(planned_start=datetime.now(UTC) - timedelta(minutes=36)))

    with app.app_context(), events.subscribe("telehealth.room.*") as told:
        assert jobs.run_now(app, "telehealth.end_overdue_calls")
        event = told.get(2.0)
    signal = client.post(
        "/api/v1/telehealth/call/signal",
        json={"type": "offer", "to": specialist_id, "sdp": VALID_SDP},
        headers=call_headers(host),
    )
    with get_database(app).session_scope() as session:
        status = session.scalars(select(Room.status)).one()

    assert event is not None
    assert event.data == {"type": "ended", "reason": "time"}
    assert status == "ended"
    assert signal.status_code == 410
