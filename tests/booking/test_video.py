"""Video sessions: the Appointment is coded virtual, telehealth finds the visit, pages link the call."""

from __future__ import annotations

import re
from datetime import time, timedelta

from booking import services
from booking.models import Clinic, ClinicSession
from his.db import as_utc, get_database
from tests.booking.helpers import ZONE, bearer, local_today
from tests.conftest import csrf_token, login

VR = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"}


def _book(client, token, session_id):
    response = client.post("/api/v1/bookings", json={"session_id": session_id}, headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_video_booking_is_a_virtual_appointment_that_telehealth_can_find(
    client, app, clinic, make_session, patient_user, make_token, make_user
):
    doctor = make_user("doctor")
    video_session = make_session(clinic.id, part="morning", minutes=12, doctor_id=doctor.id, video=True)
    room_session = make_session(clinic.id, part="afternoon")
    user = patient_user()
    token = make_token(user, "patient/*.*")

    video = _book(client, token, video_session)
    in_room = _book(client, token, room_session)
    assert video["video"] is True
    assert video["checkin_code"] is None
    assert video["video_link"] == f"/telehealth/appointments/{video['appointment'].rsplit('/', 1)[1]}"
    assert in_room["video"] is False
    assert in_room["checkin_code"].startswith("VT")
    assert in_room["video_link"] is None

    staff = {"Authorization": f"Bearer {make_token(make_user('doctor'), 'user/*.*')}"}
    found = client.get(
        f"/fhir/R4/Appointment?patient={user.patient_id}"
        "&appointment-type=http://terminology.hl7.org/CodeSystem/v3-ActCode|VR",
        headers=staff,
    ).get_json()
    assert found["total"] == 1
    appointment = found["entry"][0]["resource"]
    assert appointment["appointmentType"]["coding"] == [VR]
    video_appointment_id = appointment["id"]
    assert video["appointment"] == f"/fhir/R4/Appointment/{video_appointment_id}"
    in_room_appointment_id = in_room["appointment"].rsplit("/", 1)[1]
    plain = client.get(f"/fhir/R4/Appointment/{in_room_appointment_id}", headers=staff).get_json()
    assert "coding" not in plain["appointmentType"]

    with app.app_context(), get_database(app).session_scope() as session:
        visit = services.video_visit(session, video_appointment_id)
        assert visit is not None
        assert visit.booking_id == video["id"]
        assert visit.appointment_id == video_appointment_id
        assert visit.patient_id == user.patient_id
        assert visit.doctor_user_id == doctor.id
        assert visit.site_id == clinic.site_id
        assert visit.clinic_name == "Phòng khám Nhi 3"
        assert visit.planned_start.tzinfo is not None
        assert visit.planned_start.utcoffset() == timedelta(0)
        assert visit.planned_start == as_utc(session.get(ClinicSession, video_session).starts_at)
        assert visit.duration_minutes == 12
        assert visit.status == "booked"
        assert services.video_visit(session, in_room_appointment_id) is None
        assert services.video_visit(session, "no-such-appointment") is None


def test_sessions_made_from_a_video_template_are_video_sessions(app, clinic):
    with app.app_context(), get_database(app).session_scope() as session:
        row = session.get(Clinic, clinic.id)
        assert row is not None
        today = local_today()
        services.add_weekly_template(
            session, row, weekday=today.weekday(), part="morning", starts=time(7), ends=time(11), video=True
        )
        services.add_weekly_template(
            session, row, weekday=today.weekday(), part="afternoon", starts=time(13), ends=time(16)
        )
        created = services.generate_sessions(session, today=today, days=1, zone=ZONE)
        assert sorted((s.part, s.video) for s in created) == [("afternoon", False), ("morning", True)]


def test_the_patient_page_links_the_video_visit_instead_of_a_qr(
    client, app, clinic, make_session, patient_user, make_user
):
    doctor = make_user("doctor")
    session_id = make_session(clinic.id, doctor_id=doctor.id, video=True)
    user = patient_user()
    login(client, user.username)
    listing = client.get(f"/booking/book?clinic={clinic.id}&date={local_today().isoformat()}")
    token = csrf_token(client, f"/booking/book?clinic={clinic.id}")
    response = client.post(
        "/booking/book",
        data={"csrf_token": token, "session_id": session_id, "idempotency_key": "v1", "clinic_id": clinic.id},
    )
    assert listing.status_code == 200
    assert response.status_code == 302
    ticket = client.get(response.headers["Location"]).get_data(as_text=True)
    with get_database(app).session_scope() as session:
        appointment_id = services.find_booking(
            session, int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])
        ).appointment_id
    assert f'href="/telehealth/appointments/{appointment_id}"' in ticket
    assert "Vào khám trực tuyến" in ticket
    assert 'data-testid="video-visit"' in ticket
    assert "<svg" not in ticket
    assert 'data-testid="checkin-code"' not in ticket

    client.post("/logout", data={"csrf_token": csrf_token(client, "/booking/")})
    login(client, doctor.username)
    console = client.get(f"/booking/console/{session_id}").get_data(as_text=True)
    row = re.search(r'data-testid="video-visit-1">(.*?)</tr>', console, re.S)
    assert row is not None
    assert f'href="/telehealth/appointments/{appointment_id}"' in row.group(1)
    assert "Vào khám trực tuyến" in row.group(1)


def test_a_room_session_keeps_its_qr_and_the_console_lists_no_video_links(
    client, clinic, make_session, patient_user, make_user
):
    doctor = make_user("doctor")
    session_id = make_session(clinic.id, doctor_id=doctor.id)
    user = patient_user()
    login(client, user.username)
    token = csrf_token(client, f"/booking/book?clinic={clinic.id}")
    response = client.post(
        "/booking/book",
        data={"csrf_token": token, "session_id": session_id, "idempotency_key": "r1", "clinic_id": clinic.id},
    )
    ticket = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<svg" in ticket
    assert "/telehealth/appointments/" not in ticket
    client.post("/logout", data={"csrf_token": csrf_token(client, "/booking/")})
    login(client, doctor.username)
    console = client.get(f"/booking/console/{session_id}").get_data(as_text=True)
    assert "/telehealth/appointments/" not in console
