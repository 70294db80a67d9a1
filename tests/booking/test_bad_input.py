"""Bad input the booking API must refuse clearly, leaving nothing half-written."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from booking.models import Booking, ClinicSession, SessionCounter
from his.db import get_database
from tests.booking.helpers import bearer, count_rows, local_today, make_clinic


@pytest.fixture
def patient_token(patient_user, make_token):
    return make_token(patient_user(), "patient/*.*")


def _book(client, token, session_id, key=None):
    return client.post("/api/v1/bookings", json={"session_id": session_id}, headers=bearer(token, key))


def test_booking_before_the_window_opens(client, app, clinic, make_session, patient_token):
    session_id = make_session(clinic.id, day=local_today() + timedelta(days=10))
    response = _book(client, patient_token, session_id)
    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == "WINDOW_NOT_OPEN"
    assert body["opens_at"].endswith("Z")
    assert count_rows(app, Booking) == 0


def test_a_clinic_that_opens_at_17_the_evening_before(client, app, sites, make_session, patient_token):
    clinic = make_clinic(app, code="PK9", window_days_before=1, window_opens_at=time(17, 0))
    session_id = make_session(clinic.id, day=local_today() + timedelta(days=2))
    response = _book(client, patient_token, session_id)
    assert response.status_code == 409
    assert response.get_json()["code"] == "WINDOW_NOT_OPEN"
    opens = (local_today() + timedelta(days=1)).isoformat()
    listed = client.get(
        f"/api/v1/clinics/{clinic.id}/sessions?date={(local_today() + timedelta(days=2)).isoformat()}",
        headers=bearer(patient_token),
    ).get_json()
    # 17:00 in Hanoi is 10:00 UTC.
    assert listed[0]["window"]["opens_at"] == f"{opens}T10:00:00Z"


def test_booking_after_the_window_closed(client, app, sites, make_session, patient_token):
    clinic = make_clinic(app, code="PK8", window_closes_minutes_before_end=24 * 60)
    session_id = make_session(clinic.id, ends=time(23, 59))
    response = _book(client, patient_token, session_id)
    assert response.status_code == 409
    assert response.get_json()["code"] == "WINDOW_CLOSED"


def test_a_cancelled_or_past_or_unknown_session(client, app, clinic, make_session, patient_token):
    cancelled = make_session(clinic.id, day=local_today() + timedelta(days=1))
    past = make_session(clinic.id, day=local_today() - timedelta(days=1))
    with get_database(app).session_scope() as session:
        session.get(ClinicSession, cancelled).status = "cancelled"
    assert _book(client, patient_token, cancelled).get_json()["code"] == "SESSION_CANCELLED"
    assert _book(client, patient_token, past).get_json()["code"] == "SESSION_PAST"
    unknown = _book(client, patient_token, 999_999)
    assert unknown.status_code == 404
    assert unknown.get_json()["code"] == "SESSION_NOT_FOUND"
    assert count_rows(app, Booking) == 0


def test_a_second_booking_for_the_same_session(client, app, clinic, make_session, patient_token):
    session_id = make_session(clinic.id)
    assert _book(client, patient_token, session_id).status_code == 201
    second = _book(client, patient_token, session_id)
    assert second.status_code == 409
    assert second.get_json()["code"] == "ALREADY_BOOKED"
    assert second.get_json()["queue_number"] == 1
    with get_database(app).session_scope() as session:
        assert session.get(SessionCounter, session_id).online_issued == 1


def test_a_patient_holding_the_last_number_is_told_their_number_not_that_the_session_is_full(
    client, app, clinic, make_session, patient_token
):
    session_id = make_session(clinic.id, online=1)
    assert _book(client, patient_token, session_id).status_code == 201
    again = _book(client, patient_token, session_id)
    assert again.status_code == 409
    assert again.get_json()["code"] == "ALREADY_BOOKED"
    assert again.get_json()["queue_number"] == 1
    with get_database(app).session_scope() as session:
        assert session.get(SessionCounter, session_id).online_issued == 1
    assert count_rows(app, Booking) == 1


def test_malformed_requests_name_what_is_wrong(client, app, clinic, make_session, patient_token):
    session_id = make_session(clinic.id)
    no_key = client.post(
        "/api/v1/bookings",
        json={"session_id": session_id},
        headers={"Authorization": f"Bearer {patient_token}"},
    )
    assert no_key.status_code == 400
    assert "Idempotency-Key" in no_key.get_json()["fields"]
    for bad in ({}, {"session_id": "abc"}, {"session_id": -1}, {"session_id": True}):
        response = client.post("/api/v1/bookings", json=bad, headers=bearer(patient_token))
        assert response.status_code == 422, bad
        assert "session_id" in response.get_json()["fields"]
    not_json = client.post("/api/v1/bookings", data="session_id=1", headers=bearer(patient_token))
    assert not_json.status_code == 415
    bad_date = client.get(
        f"/api/v1/clinics/{clinic.id}/sessions?date=23/11/2026", headers=bearer(patient_token)
    )
    assert bad_date.status_code == 422
    assert "date" in bad_date.get_json()["fields"]
    assert (
        client.get("/api/v1/clinics/999/sessions?date=2026-11-23", headers=bearer(patient_token)).status_code
        == 404
    )
    assert client.post("/api/v1/bookings", json={"session_id": session_id}).status_code == 401
    assert count_rows(app, Booking) == 0


def test_cancelling_after_the_cutoff_is_refused(client, app, clinic, make_session, patient_token):
    session_id = make_session(clinic.id)  # started at midnight: the cutoff has passed
    booking = _book(client, patient_token, session_id).get_json()
    response = client.delete(f"/api/v1/bookings/{booking['id']}", headers=bearer(patient_token))
    assert response.status_code == 409
    assert response.get_json()["code"] == "CANCEL_CUTOFF_PASSED"
    assert (
        client.get(f"/api/v1/bookings/{booking['id']}", headers=bearer(patient_token)).get_json()["status"]
        == "booked"
    )


def test_a_forged_checkin_code_gets_a_clear_message(
    client, app, clinic, make_session, patient_token, make_user, make_token
):
    session_id = make_session(clinic.id)
    booking = _book(client, patient_token, session_id).get_json()
    desk = make_token(make_user("receptionist"), "user/*.*")
    number, signature = booking["checkin_code"].split("-")
    forged = f"{number}-{'A' * len(signature)}"
    for code in (forged, "VT1-", "hello", ""):
        response = client.post("/api/v1/checkins", json={"code": code}, headers=bearer(desk))
        assert response.status_code == 400
        body = response.get_json()
        assert body["code"] == "CHECKIN_CODE_INVALID"
        assert "not issued by this hospital" in body["message"]
    assert (
        client.get(f"/api/v1/bookings/{booking['id']}", headers=bearer(patient_token)).get_json()["status"]
        == "booked"
    )


def test_calling_next_in_an_empty_queue(client, app, clinic, make_session, make_user, make_token):
    session_id = make_session(clinic.id)
    doctor = make_token(make_user("doctor"), "user/*.*")
    response = client.post(f"/api/v1/sessions/{session_id}/queue/next", headers=bearer(doctor))
    assert response.status_code == 409
    assert response.get_json()["code"] == "QUEUE_EMPTY"
    assert (
        client.post(f"/api/v1/sessions/{session_id}/queue/recall", headers=bearer(doctor)).status_code == 409
    )


def test_checking_in_on_the_wrong_day(
    client, app, clinic, make_session, patient_token, make_user, make_token
):
    session_id = make_session(clinic.id, day=local_today() + timedelta(days=1))
    booking = _book(client, patient_token, session_id).get_json()
    desk = make_token(make_user("receptionist"), "user/*.*")
    response = client.post("/api/v1/checkins", json={"code": booking["checkin_code"]}, headers=bearer(desk))
    assert response.status_code == 409
    assert response.get_json()["code"] == "CHECKIN_WRONG_DAY"
    assert response.get_json()["date"] == (local_today() + timedelta(days=1)).isoformat()
