"""Jobs that run twice without harm: sessions from weekly templates, no-shows; and rescheduling."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select

from booking import services
from booking.models import Booking, Clinic, ClinicSession, Closure
from fhir import services as store
from his import jobs
from his.db import get_database
from tests.booking.helpers import ZONE, bearer, local_today


def test_sessions_come_from_the_weekly_templates_except_on_closures(app, clinic, make_user):
    doctor = make_user("doctor")
    tomorrow = local_today() + timedelta(days=1)
    with app.app_context(), get_database(app).session_scope() as session:
        row = session.get(Clinic, clinic.id)
        for weekday in range(7):
            services.add_weekly_template(
                session,
                row,
                weekday=weekday,
                part="morning",
                starts=time(7),
                ends=time(11),
                doctor_id=doctor.id,
            )
        services.add_weekly_template(
            session, row, weekday=tomorrow.weekday(), part="afternoon", starts=time(13), ends=time(16)
        )
        session.add(
            Closure(site_id=clinic.site_id, clinic_id=clinic.id, day=tomorrow, part="morning", reason="Họp")
        )
    assert jobs.run_now(app, "booking.generate_sessions")
    assert jobs.run_now(app, "booking.generate_sessions")
    with get_database(app).session_scope() as session:
        sessions = session.execute(
            select(ClinicSession.day, ClinicSession.part, ClinicSession.doctor_id)
        ).all()
    # Two weeks of mornings minus the closed one, and the afternoon of that weekday twice.
    assert len(sessions) == 14 - 1 + 2
    assert (tomorrow, "morning") not in {(d, p) for d, p, _ in sessions}
    assert (tomorrow, "afternoon") in {(d, p) for d, p, _ in sessions}
    assert {doc for _d, p, doc in sessions if p == "morning"} == {doctor.id}


def test_bookings_never_checked_in_become_no_shows(app, clinic, make_session, make_patient):
    yesterday = local_today() - timedelta(days=1)
    session_id = make_session(clinic.id, day=yesterday, starts=time(7), ends=time(11))
    patient_id = make_patient()
    during = datetime.combine(yesterday, time(6), tzinfo=ZONE).astimezone(UTC)
    with app.app_context(), get_database(app).session_scope() as session:
        result = services.book(
            session,
            services.BookingRequest(session_id=session_id, patient_id=patient_id, booked_by=None),
            zone=ZONE,
            now=during,
        )
        booking_id = result.booking.id
    assert jobs.run_now(app, "booking.release_no_shows")
    assert jobs.run_now(app, "booking.release_no_shows")
    with get_database(app).session_scope() as session:
        booking = session.get(Booking, booking_id)
        assert booking.status == "no_show"
        appointment = store.read(session, "Appointment", booking.appointment_id)
        assert appointment.resource["status"] == "noshow"
        assert appointment.version_id == 2


def test_a_booking_is_moved_to_another_session(client, app, clinic, make_session, patient_user, make_token):
    first = make_session(clinic.id, day=local_today() + timedelta(days=1))
    second = make_session(clinic.id, day=local_today() + timedelta(days=2))
    token = make_token(patient_user(), "patient/*.*")
    booking = client.post("/api/v1/bookings", json={"session_id": first}, headers=bearer(token)).get_json()
    moved = client.post(
        f"/api/v1/bookings/{booking['id']}/reschedule", json={"session_id": second}, headers=bearer(token)
    )
    assert moved.status_code == 201, moved.get_json()
    assert moved.get_json()["session"]["id"] == second
    old = client.get(f"/api/v1/bookings/{booking['id']}", headers=bearer(token)).get_json()
    assert old["status"] == "cancelled"
    # Moving into a full session changes nothing.
    full = make_session(clinic.id, day=local_today() + timedelta(days=3), online=0)
    refused = client.post(
        f"/api/v1/bookings/{moved.get_json()['id']}/reschedule",
        json={"session_id": full},
        headers=bearer(token),
    )
    assert refused.get_json()["code"] == "SESSION_FULL"
    assert (
        client.get(f"/api/v1/bookings/{moved.get_json()['id']}", headers=bearer(token)).get_json()["status"]
        == "booked"
    )
