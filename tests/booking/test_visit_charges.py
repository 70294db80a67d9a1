"""Check-ins announce the Encounter with the clinic's visit fee code, so billing charges the visit."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from billing import services as billing
from booking.models import Booking, Clinic
from his import events
from his.db import get_database
from tests.booking.helpers import bearer, make_clinic
from tests.conftest import csrf_token, login

PRICES = Path(__file__).resolve().parents[2] / "billing" / "data" / "prices_demo.csv"


def _book_online(client, make_token, user, session_id) -> dict:
    response = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(make_token(user, "patient/*.*"))
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _encounter_of(app, booking_id: int) -> str:
    with get_database(app).session_scope() as session:
        row = session.get(Booking, booking_id)
        assert row is not None
        assert row.encounter_id
        return row.encounter_id


def test_a_desk_check_in_announces_the_encounter_with_the_visit_code(
    client, app, make_session, patient_user, make_user, make_token
):
    clinic = make_clinic(app, "DIST", code="PKN", visit_code="KB.NOI")
    session_id = make_session(clinic.id)
    user = patient_user()
    booked = _book_online(client, make_token, user, session_id)

    login(client, make_user("receptionist").username)
    token = csrf_token(client, "/booking/desk")
    with app.app_context(), events.subscribe("encounter.checked_in", timeout=2) as subscription:
        before = datetime.now(UTC).replace(microsecond=0)
        done = client.post(
            "/booking/desk/checkin", data={"csrf_token": token, "code": booked["checkin_code"]}
        )
        assert done.status_code == 302
        event = subscription.get(timeout=2)
        # Checking the same code in again opens nothing new and charges nothing twice.
        client.post("/booking/desk/checkin", data={"csrf_token": token, "code": booked["checkin_code"]})
        again = subscription.get(timeout=0.3)
    assert again is None
    assert event is not None
    encounter_id = _encounter_of(app, booked["id"])
    assert set(event.data) == {"encounter_id", "patient_id", "visit_code", "checked_in_at"}
    assert event.data["encounter_id"] == encounter_id
    assert event.data["patient_id"] == user.patient_id
    assert event.data["visit_code"] == "KB.NOI"
    moment = datetime.fromisoformat(event.data["checked_in_at"].replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    assert before <= moment <= datetime.now(UTC)

    staff = {"Authorization": f"Bearer {make_token(make_user('doctor'), 'user/*.*')}"}
    stored = client.get(f"/fhir/R4/Encounter/{encounter_id}", headers=staff)
    assert stored.status_code == 200
    assert stored.get_json()["subject"] == {"reference": f"Patient/{user.patient_id}"}
    assert stored.get_json()["status"] == "arrived"


def test_a_walk_in_announces_its_encounter_through_the_api(
    client, app, make_session, make_patient, make_user, make_token
):
    clinic = make_clinic(app, "DIST", code="PKW", visit_code="KB.NHI")
    session_id = make_session(clinic.id)
    patient_id = make_patient()
    desk = make_token(make_user("receptionist"), "user/*.*")
    with app.app_context(), events.subscribe("encounter.checked_in", timeout=2) as subscription:
        response = client.post(
            f"/api/v1/sessions/{session_id}/walk-ins", json={"patient_id": patient_id}, headers=bearer(desk)
        )
        event = subscription.get(timeout=2)
    assert response.status_code == 201, response.get_json()
    assert event is not None
    encounter_id = _encounter_of(app, response.get_json()["id"])
    assert response.get_json()["encounter"] == f"/fhir/R4/Encounter/{encounter_id}"
    assert event.data["encounter_id"] == encounter_id
    assert event.data["patient_id"] == patient_id
    assert event.data["visit_code"] == "KB.NHI"
    stored = client.get(f"/fhir/R4/Encounter/{encounter_id}", headers={"Authorization": f"Bearer {desk}"})
    assert stored.status_code == 200


def test_a_clinic_without_a_visit_code_announces_nothing_and_says_no_fee_is_charged(
    client, app, make_session, make_patient, make_user, make_token, caplog
):
    clinic = make_clinic(app, "DIST", code="PKF")
    session_id = make_session(clinic.id)
    desk = make_token(make_user("receptionist"), "user/*.*")
    with (
        caplog.at_level(logging.WARNING, logger="booking.services"),
        app.app_context(),
        events.subscribe("encounter.checked_in", timeout=0.3) as subscription,
    ):
        response = client.post(
            f"/api/v1/sessions/{session_id}/walk-ins",
            json={"patient_id": make_patient()},
            headers=bearer(desk),
        )
        event = subscription.get(timeout=0.3)
    assert response.status_code == 201, response.get_json()
    assert event is None
    assert any("no visit code" in record.getMessage() for record in caplog.records)

    login(client, make_user("manager").username)
    listing = client.get("/booking/clinics").get_data(as_text=True)
    row = re.search(rf'data-testid="clinic-{clinic.id}">(.*?)</tr>', listing, re.S)
    assert row is not None
    assert "Không thu phí khám" in row.group(1)
    settings = client.get(f"/booking/clinics/{clinic.id}").get_data(as_text=True)
    assert "Không thu phí khám" in re.search(r'data-testid="visit-fee">(.*?)</p>', settings, re.S).group(1)


def test_a_manager_sets_the_visit_code_from_the_price_list(client, app, make_user):
    with app.app_context(), get_database(app).session_scope() as session:
        billing.import_prices(session, billing.read_price_csv(PRICES.read_bytes()))
    clinic = make_clinic(app, "DIST", code="PKS")
    login(client, make_user("manager").username)
    token = csrf_token(client, f"/booking/clinics/{clinic.id}")

    unknown = client.post(
        f"/booking/clinics/{clinic.id}/visit-code",
        data={"csrf_token": token, "visit_code": "KB.KHONGCO"},
        follow_redirects=True,
    )
    assert "visit_code" in unknown.get_data(as_text=True)
    with get_database(app).session_scope() as session:
        assert session.get(Clinic, clinic.id).visit_code is None

    saved = client.post(
        f"/booking/clinics/{clinic.id}/visit-code",
        data={"csrf_token": token, "visit_code": " KB.NOI "},
        follow_redirects=True,
    ).get_data(as_text=True)
    fee = re.search(r'data-testid="visit-fee">(.*?)</p>', saved, re.S).group(1)
    assert "KB.NOI" in fee
    assert "Khám Nội (demo)" in fee
    with get_database(app).session_scope() as session:
        assert session.get(Clinic, clinic.id).visit_code == "KB.NOI"

    client.post(f"/booking/clinics/{clinic.id}/visit-code", data={"csrf_token": token, "visit_code": ""})
    with get_database(app).session_scope() as session:
        assert session.get(Clinic, clinic.id).visit_code is None


def test_a_manager_of_another_site_cannot_see_or_change_the_clinic(client, app, make_user):
    clinic = make_clinic(app, "DIST", code="PKO", visit_code="KB.NOI")
    login(client, make_user("manager", site="CENT").username)
    assert client.get(f"/booking/clinics/{clinic.id}").status_code == 404
    token = csrf_token(client, "/booking/clinics")
    changed = client.post(
        f"/booking/clinics/{clinic.id}/visit-code", data={"csrf_token": token, "visit_code": ""}
    )
    assert changed.status_code == 404
    with get_database(app).session_scope() as session:
        assert session.get(Clinic, clinic.id).visit_code == "KB.NOI"
