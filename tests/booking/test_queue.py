"""The day of the visit: check-in by code, walk-ins, the doctor's console, skips and estimates."""

from __future__ import annotations

from datetime import datetime

from booking.models import QueueCall
from his import events
from tests.booking.helpers import bearer, count_rows, make_clinic


def _book_many(client, session_id, tokens):
    return [
        client.post("/api/v1/bookings", json={"session_id": session_id}, headers=bearer(t)).get_json()
        for t in tokens
    ]


def _check_in(client, desk, booking):
    return client.post("/api/v1/checkins", json={"code": booking["checkin_code"]}, headers=bearer(desk))


def test_checkin_by_code_starts_the_encounter(
    client, app, clinic, make_session, patient_user, make_user, make_token
):
    session_id = make_session(clinic.id)
    patient = make_token(patient_user(), "patient/*.*")
    (booking,) = _book_many(client, session_id, [patient])
    desk = make_token(make_user("receptionist"), "user/*.*")
    checked = _check_in(client, desk, booking)
    assert checked.status_code == 200, checked.get_json()
    assert checked.get_json()["status"] == "arrived"
    encounter = client.get(checked.get_json()["encounter"], headers=bearer(desk)).get_json()
    assert encounter["status"] == "arrived"
    assert encounter["appointment"][0]["reference"].endswith(booking["appointment"].rsplit("/", 1)[1])
    appointment = client.get(booking["appointment"], headers=bearer(desk)).get_json()
    assert appointment["status"] == "arrived"
    # Scanning twice is harmless.
    assert _check_in(client, desk, booking).get_json()["encounter"] == checked.get_json()["encounter"]


def test_another_sites_desk_cannot_check_in(
    client, app, clinic, make_session, patient_user, make_user, make_token
):
    session_id = make_session(clinic.id)
    (booking,) = _book_many(client, session_id, [make_token(patient_user(), "patient/*.*")])
    central = make_token(make_user("receptionist", site="CENT"), "user/*.*")
    assert _check_in(client, central, booking).status_code == 404


def test_walk_ins_get_numbers_from_their_own_range(
    client, app, sites, make_session, make_patient, make_user, make_token
):
    split = make_clinic(app, code="PK1")
    alternate = make_clinic(app, code="PK2", numbering="alternate")
    desk = make_token(make_user("receptionist"), "user/*.*")
    for clinic_id, expected in ((split.id, [11, 12]), (alternate.id, [2, 4])):
        session_id = make_session(clinic_id, online=10, walkin=2)
        numbers = []
        for _ in range(2):
            response = client.post(
                f"/api/v1/sessions/{session_id}/walk-ins",
                json={"patient_id": make_patient()},
                headers=bearer(desk),
            )
            assert response.status_code == 201, response.get_json()
            assert response.get_json()["status"] == "arrived"
            numbers.append(response.get_json()["queue_number"])
        assert numbers == expected
        full = client.post(
            f"/api/v1/sessions/{session_id}/walk-ins",
            json={"patient_id": make_patient()},
            headers=bearer(desk),
        )
        assert full.get_json()["code"] == "WALKIN_FULL"


def test_a_walk_in_is_recorded_with_its_appointment_and_encounter(
    client, app, clinic, make_session, make_patient, make_user, make_token
):
    """The desk's walk-in answer names an Appointment and an Encounter that exist and agree."""
    session_id = make_session(clinic.id, online=10, walkin=2)
    desk = make_token(make_user("receptionist"), "user/*.*")
    walk_in = client.post(
        f"/api/v1/sessions/{session_id}/walk-ins", json={"patient_id": make_patient()}, headers=bearer(desk)
    ).get_json()
    appointment = client.get(walk_in["appointment"], headers=bearer(desk)).get_json()
    assert appointment["status"] == "arrived"
    assert str(walk_in["queue_number"]) in [i["value"] for i in appointment["identifier"]]
    encounter = client.get(walk_in["encounter"], headers=bearer(desk)).get_json()
    assert encounter["appointment"] == [{"reference": f"Appointment/{appointment['id']}"}]
    # Read back from the database: the row keeps what the request answered.
    again = client.get(f"/api/v1/bookings/{walk_in['id']}", headers=bearer(desk)).get_json()
    assert (again["appointment"], again["encounter"]) == (walk_in["appointment"], walk_in["encounter"])


def test_the_doctor_calls_recalls_skips_and_finishes(
    client, app, sites, make_session, patient_user, make_user, make_token
):
    clinic = make_clinic(app, skip_back_places=2, max_skips=1)
    session_id = make_session(clinic.id, online=10)
    tokens = [make_token(patient_user(), "patient/*.*") for _ in range(4)]
    bookings = _book_many(client, session_id, tokens)
    desk = make_token(make_user("receptionist"), "user/*.*")
    for booking in bookings:
        _check_in(client, desk, booking)
    doctor = make_token(make_user("doctor"), "user/*.*")

    def act(action):
        response = client.post(f"/api/v1/sessions/{session_id}/queue/{action}", headers=bearer(doctor))
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    with app.app_context(), events.subscribe("queue.*", timeout=1) as stream:
        state = act("next")
        assert state["serving"] == 1
        assert state["waiting"] == [2, 3, 4]
        act("recall")
        called = [stream.get(1), stream.get(1)]
    assert [e.topic for e in called] == ["queue.called", "queue.called"]
    assert called[0].data["queue_number"] == 1
    assert called[0].data["room"] == "Phòng khám 3"
    assert called[1].data["recall"] is True

    # Number 1 does not come in: back two places, behind 2 and 3.
    state = act("skip")
    assert state["serving"] is None
    assert state["waiting"] == [2, 3, 1, 4]
    assert act("next")["serving"] == 2
    state = act("next")  # 2 is done, 3 is called
    assert state["serving"] == 3
    assert act("next")["serving"] == 1
    # Skipped a second time with max_skips=1: out of the queue.
    state = act("skip")
    assert state["waiting"] == [4]
    assert (
        client.get(f"/api/v1/bookings/{bookings[0]['id']}", headers=bearer(tokens[0])).get_json()["status"]
        == "missed"
    )
    assert act("next")["serving"] == 4
    assert act("done")["serving"] is None
    assert (
        client.get(f"/api/v1/bookings/{bookings[3]['id']}", headers=bearer(tokens[3])).get_json()["status"]
        == "done"
    )
    assert count_rows(app, QueueCall, action="skip") == 2


def test_the_estimate_moves_as_numbers_are_called(
    client, app, clinic, make_session, patient_user, make_user, make_token
):
    session_id = make_session(clinic.id, online=10, minutes=10)
    tokens = [make_token(patient_user(), "patient/*.*") for _ in range(3)]
    bookings = _book_many(client, session_id, tokens)
    assert [b["ahead"] for b in bookings] == [0, 1, 2]
    planned = [datetime.fromisoformat(b["planned_call_time"]) for b in bookings]
    assert (planned[2] - planned[0]).total_seconds() == 20 * 60
    desk = make_token(make_user("receptionist"), "user/*.*")
    for booking in bookings:
        _check_in(client, desk, booking)
    last_before = client.get(f"/api/v1/bookings/{bookings[2]['id']}", headers=bearer(tokens[2])).get_json()
    doctor = make_token(make_user("doctor"), "user/*.*")
    client.post(f"/api/v1/sessions/{session_id}/queue/next", headers=bearer(doctor))
    client.post(f"/api/v1/sessions/{session_id}/queue/next", headers=bearer(doctor))
    last_after = client.get(f"/api/v1/bookings/{bookings[2]['id']}", headers=bearer(tokens[2])).get_json()
    assert last_before["ahead"] == 2
    assert last_after["ahead"] == 0
    assert last_after["now_serving"] == 2
    # Number 1 took seconds, not ten minutes: the estimate comes closer.
    assert datetime.fromisoformat(last_after["estimated_call_time"]) < datetime.fromisoformat(
        last_before["estimated_call_time"]
    )
