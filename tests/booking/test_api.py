"""The booking API: clinics, sessions, a number with its time and QR code, cancel, FHIR records."""

from __future__ import annotations

from datetime import time, timedelta

from booking.models import Booking, SessionCounter
from his.db import get_database
from tests.booking.helpers import bearer, count_rows, local_today


def test_a_patient_books_and_gets_a_number_a_time_and_a_checkin_code(
    client, app, clinic, make_session, patient_user, make_token
):
    session_id = make_session(clinic.id, online=10, minutes=5)
    user = patient_user()
    token = make_token(user, "patient/*.*")

    clinics = client.get("/api/v1/clinics", headers=bearer(token)).get_json()
    assert [c["room"] for c in clinics] == ["Phòng khám 3"]
    listed = client.get(
        f"/api/v1/clinics/{clinic.id}/sessions?date={local_today().isoformat()}", headers=bearer(token)
    ).get_json()
    assert listed[0]["id"] == session_id
    assert listed[0]["remaining_online"] == 10
    assert listed[0]["window"]["state"] == "open"

    first = client.post("/api/v1/bookings", json={"session_id": session_id}, headers=bearer(token))
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert body["queue_number"] == 1
    assert body["checkin_code"].startswith(f"VT{body['id']}-")
    assert body["estimated_call_time"].endswith("Z")
    assert body["patient_id"] == user.patient_id

    listed = client.get(
        f"/api/v1/clinics/{clinic.id}/sessions?date={local_today().isoformat()}", headers=bearer(token)
    ).get_json()
    assert listed[0]["remaining_online"] == 9

    again = client.get(f"/api/v1/bookings/{body['id']}", headers=bearer(token))
    assert again.status_code == 200
    assert again.get_json()["queue_number"] == 1


def test_the_appointment_is_in_the_fhir_store_with_the_queue_number(
    client, app, clinic, make_session, patient_user, make_token, make_user
):
    tomorrow = local_today() + timedelta(days=1)
    session_id = make_session(clinic.id, day=tomorrow, starts=time(8, 0), ends=time(11, 30))
    user = patient_user()
    token = make_token(user, "patient/*.*")
    booking = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(token)
    ).get_json()
    staff = make_token(make_user("doctor"), "user/*.*")
    found = client.get(
        f"/fhir/R4/Appointment?patient={user.patient_id}&date={tomorrow.isoformat()}",
        headers={"Authorization": f"Bearer {staff}"},
    ).get_json()
    assert found["total"] == 1
    appointment = found["entry"][0]["resource"]
    assert appointment["status"] == "booked"
    numbers = [
        i["value"] for i in appointment["identifier"] if i["system"] == "urn:vetinh:booking:queue-number"
    ]
    assert numbers == [str(booking["queue_number"])]
    slot = client.get(
        appointment["slot"][0]["reference"].join(["/fhir/R4/", ""]),
        headers={"Authorization": f"Bearer {staff}"},
    )
    assert slot.get_json()["resourceType"] == "Slot"


def test_the_same_idempotency_key_returns_the_same_booking(
    client, app, clinic, make_session, patient_user, make_token
):
    session_id = make_session(clinic.id)
    token = make_token(patient_user(), "patient/*.*")
    headers = bearer(token, "double-click-1")
    first = client.post("/api/v1/bookings", json={"session_id": session_id}, headers=headers)
    second = client.post("/api/v1/bookings", json={"session_id": session_id}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["id"] == second.get_json()["id"]
    assert count_rows(app, Booking) == 1
    other = client.post("/api/v1/bookings", json={"session_id": session_id + 1000}, headers=headers)
    assert other.status_code == 422
    assert other.get_json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_a_parent_books_for_a_linked_child_but_not_for_a_stranger(
    client, app, clinic, make_session, patient_user, make_patient, make_token
):
    session_id = make_session(clinic.id)
    child = make_patient("Nguyễn Bé Na")
    stranger = make_patient("Người Lạ")
    parent = patient_user(children=(child,))
    token = make_token(parent, "patient/*.*")
    ok = client.post(
        "/api/v1/bookings", json={"session_id": session_id, "patient_id": child}, headers=bearer(token)
    )
    assert ok.status_code == 201
    assert ok.get_json()["patient_id"] == child
    denied = client.post(
        "/api/v1/bookings", json={"session_id": session_id, "patient_id": stranger}, headers=bearer(token)
    )
    assert denied.status_code == 403
    assert count_rows(app, Booking, patient_id=stranger) == 0


def test_a_receptionist_books_for_a_registered_patient(
    client, app, clinic, make_session, make_user, make_token
):
    session_id = make_session(clinic.id)
    token = make_token(make_user("receptionist"), "user/*.*")
    registered = client.post(
        "/api/v1/patients",
        json={"full_name": "Trần Thị Mơ", "birth_date": "2019-02-03", "sex": "female"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert registered.status_code == 201
    patient_id = registered.get_json()["id"]
    booked = client.post(
        "/api/v1/bookings", json={"session_id": session_id, "patient_id": patient_id}, headers=bearer(token)
    )
    assert booked.status_code == 201, booked.get_json()
    assert booked.get_json()["queue_number"] == 1


def test_another_patients_booking_is_not_found(client, app, clinic, make_session, patient_user, make_token):
    session_id = make_session(clinic.id)
    owner = make_token(patient_user(), "patient/*.*")
    other = make_token(patient_user(), "patient/*.*")
    booking = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(owner)
    ).get_json()
    assert client.get(f"/api/v1/bookings/{booking['id']}", headers=bearer(other)).status_code == 404
    assert client.delete(f"/api/v1/bookings/{booking['id']}", headers=bearer(other)).status_code == 404
    assert (
        client.get(f"/api/v1/bookings/{booking['id']}", headers=bearer(owner)).get_json()["status"]
        == "booked"
    )


def test_a_cancelled_number_is_never_given_again(client, app, clinic, make_session, patient_user, make_token):
    session_id = make_session(clinic.id, day=local_today() + timedelta(days=1), online=3)
    first = make_token(patient_user(), "patient/*.*")
    booking = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(first)
    ).get_json()
    cancelled = client.delete(f"/api/v1/bookings/{booking['id']}", headers=bearer(first))
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["checkin_code"] is None
    numbers = [
        client.post(
            "/api/v1/bookings",
            json={"session_id": session_id},
            headers=bearer(make_token(patient_user(), "patient/*.*")),
        ).get_json()
        for _ in range(3)
    ]
    assert [n.get("queue_number") for n in numbers] == [2, 3, None]
    assert numbers[2]["code"] == "SESSION_FULL"
    # The patient who cancelled may book again, but gets no number once the session is full.
    rebook = client.post("/api/v1/bookings", json={"session_id": session_id}, headers=bearer(first))
    assert rebook.status_code == 409
    with get_database(app).session_scope() as session:
        assert session.get(SessionCounter, session_id).online_issued == 3


def test_a_full_session_names_the_next_session_with_room(
    client, app, clinic, make_session, patient_user, make_token
):
    full = make_session(clinic.id, online=1)
    later = make_session(clinic.id, day=local_today() + timedelta(days=1), online=5)
    client.post(
        "/api/v1/bookings",
        json={"session_id": full},
        headers=bearer(make_token(patient_user(), "patient/*.*")),
    )
    response = client.post(
        "/api/v1/bookings",
        json={"session_id": full},
        headers=bearer(make_token(patient_user(), "patient/*.*")),
    )
    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == "SESSION_FULL"
    assert body["next_session"]["id"] == later
    assert body["next_session"]["remaining_online"] == 5


def test_the_booking_api_is_in_the_openapi_document(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    post = paths["/api/v1/bookings"]["post"]
    assert {"201", "409"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert "delete" in paths["/api/v1/bookings/{booking_id}"]
    assert "get" in paths["/api/v1/clinics/{clinic_id}/sessions"]


def test_a_full_session_still_replays_earlier_keys_and_never_gives_a_number_back(
    client, app, clinic, make_session, patient_user, make_token
):
    full = make_session(clinic.id, online=2)
    first, second = patient_user(), patient_user()
    first_token = make_token(first, "patient/*.*")
    made = client.post("/api/v1/bookings", json={"session_id": full}, headers=bearer(first_token, "k-1"))
    assert made.status_code == 201
    # The patient who already holds a number is refused it again without using up the last one.
    twice = client.post("/api/v1/bookings", json={"session_id": full}, headers=bearer(first_token))
    assert twice.get_json()["code"] == "ALREADY_BOOKED"
    last = client.post(
        "/api/v1/bookings", json={"session_id": full}, headers=bearer(make_token(second, "patient/*.*"))
    )
    assert last.get_json()["queue_number"] == 2
    for _ in range(3):
        refused = client.post(
            "/api/v1/bookings",
            json={"session_id": full},
            headers=bearer(make_token(patient_user(), "patient/*.*")),
        )
        assert refused.status_code == 409
        assert refused.get_json()["code"] == "SESSION_FULL"
        replay = client.post(
            "/api/v1/bookings", json={"session_id": full}, headers=bearer(first_token, "k-1")
        )
        assert replay.status_code == 201
        assert replay.get_json()["id"] == made.get_json()["id"]
    with get_database(app).session_scope() as session:
        assert session.get(SessionCounter, full).online_issued == 2
    assert count_rows(app, Booking, session_id=full) == 2
