"""Video visits booked through booking's clinic sessions open one shared room.

The booking is made through booking's own services (a video session today, the patient
booked online); the patient and the doctor then open ``/telehealth/appointments/<id>``
as booking's pages link them, log in through the real login form, and follow the page.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from booking import services as booking
from booking.models import Booking, Clinic
from his.db import get_database
from his.models import AuditRecord, PatientLink, Site, User
from his.patients import PatientDetails, create_patient
from telehealth.models import Participant, Room
from tests.booking.helpers import ZONE, make_clinic
from tests.conftest import TEST_PASSWORD, LiveServer, csrf_token, login
from tests.telehealth.conftest import CallPeople, call_headers

ON_POSTGRES = os.environ.get("VETINH_TEST_BACKEND", "sqlite") == "postgresql"
CALL_LINK = re.compile(r"/telehealth/call#([A-Za-z0-9_-]+)$")


@dataclass
class VideoVisitBooking:
    booking_id: int
    appointment_id: str
    session_id: int


def _now_local() -> datetime:
    return datetime.now(ZONE)


def _book(
    app: Flask,
    people: CallPeople,
    *,
    video: bool = True,
    doctor: User | None = None,
    starts_in: timedelta = timedelta(minutes=-1),
) -> VideoVisitBooking:
    """Open a session at the district clinic starting about now and book the patient online."""
    clinic = make_clinic(
        app,
        "DIST",
        code=f"V{os.urandom(3).hex()}",
        window_closes_minutes_before_end=0,
        cancel_minutes_before_start=0,
    )
    # The session is on the day of its start, which is not today just around midnight.
    start = (_now_local() + starts_in).replace(second=0, microsecond=0)
    starts = min(start.time(), time(23, 58))
    with app.app_context(), get_database(app).session_scope() as session:
        row = booking.create_session(
            session,
            session.get(Clinic, clinic.id),  # type: ignore[arg-type]
            day=start.date(),
            part="afternoon",
            starts=starts,
            ends=time(23, 59),
            zone=ZONE,
            doctor_id=doctor.id if doctor is not None else None,
            online_capacity=10,
            walkin_capacity=5,
            minutes_per_patient=10,
            video=video,
        )
        # Open for hours whatever the time of day (23:59 may be minutes away).
        row.ends_at = start + timedelta(hours=6)
        result = booking.book(
            session,
            booking.BookingRequest(session_id=row.id, patient_id=people.patient_id, booked_by=None),
            zone=ZONE,
        )
        assert result.booking.appointment_id is not None
        return VideoVisitBooking(result.booking.id, result.booking.appointment_id, row.id)


@pytest.fixture
def visit(app: Flask, people: CallPeople) -> VideoVisitBooking:
    """A video visit with the district doctor, booked by the patient for now."""
    return _book(app, people, doctor=people.doctor)


def _open(client: FlaskClient, appointment_id: str) -> str:
    """Open the visit as booking links it and follow the page's button; return the call token."""
    page = client.get(f"/telehealth/appointments/{appointment_id}")
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    token = csrf_token(client, f"/telehealth/appointments/{appointment_id}")
    entered = client.post(f"/telehealth/appointments/{appointment_id}", data={"csrf_token": token})
    assert entered.status_code == 303, entered.get_data(as_text=True)[:500]
    match = CALL_LINK.search(entered.headers["Location"])
    assert match, entered.headers["Location"]
    return match.group(1)


def _call(client: FlaskClient, method: str, path: str, token: str, **more: Any) -> Any:
    """Use the call API as the call page does: the join token, and the session's CSRF token."""
    headers = {**call_headers(token), "X-CSRFToken": csrf_token(client, "/telehealth/call")}
    return getattr(client, method)(f"/api/v1/telehealth/call/{path}", headers=headers, **more)


def _logged_in(app: Flask, username: str) -> FlaskClient:
    client = app.test_client()
    assert login(client, username).status_code in (302, 303)
    return client


def _rooms_of(app: Flask, appointment_id: str) -> list[Room]:
    with get_database(app).session_scope() as session:
        rooms = list(session.scalars(select(Room).where(Room.appointment_id == appointment_id)))
        for room in rooms:
            session.expunge(room)
        return rooms


def test_the_patient_and_the_doctor_opening_the_visit_end_in_the_same_room(
    app: Flask, people: CallPeople, visit: VideoVisitBooking
) -> None:
    patient = _logged_in(app, people.patient_user.username)
    doctor = _logged_in(app, people.doctor.username)

    page = patient.get(f"/telehealth/appointments/{visit.appointment_id}").get_data(as_text=True)
    patient_token = _open(patient, visit.appointment_id)
    doctor_token = _open(doctor, visit.appointment_id)
    doctor_joined = _call(doctor, "post", "join", doctor_token)
    patient_joined = _call(patient, "post", "join", patient_token)

    assert "Phòng khám Nhi 3" in page
    assert doctor_joined.status_code == 200, doctor_joined.get_json()
    assert patient_joined.status_code == 200, patient_joined.get_json()
    rooms = _rooms_of(app, visit.appointment_id)
    assert [room.id for room in rooms] == [doctor_joined.get_json()["room"]["id"]]
    assert patient_joined.get_json()["room"]["id"] == rooms[0].id
    assert rooms[0].kind == "visit"
    assert rooms[0].patient_id == people.patient_id
    assert rooms[0].duration_minutes == 10
    assert doctor_joined.get_json()["participant"]["role"] == "host"
    assert patient_joined.get_json()["participant"]["role"] == "patient"


def test_the_patient_waits_in_the_lobby_until_the_doctor_admits_them(
    app: Flask, people: CallPeople, visit: VideoVisitBooking
) -> None:
    patient = _logged_in(app, people.patient_user.username)
    doctor = _logged_in(app, people.doctor.username)
    patient_token = _open(patient, visit.appointment_id)
    doctor_token = _open(doctor, visit.appointment_id)

    waiting = _call(patient, "post", "join", patient_token).get_json()
    chat_while_waiting = _call(patient, "get", "chat", patient_token)
    hosting = _call(doctor, "post", "join", doctor_token).get_json()
    lobby = _call(doctor, "get", "lobby", doctor_token).get_json()
    admitted = _call(
        doctor,
        "post",
        "lobby",
        doctor_token,
        json={"participant": waiting["participant"]["id"], "action": "admit"},
    )
    in_call = _call(patient, "post", "join", patient_token).get_json()

    assert waiting["state"] == "waiting"
    assert chat_while_waiting.status_code == 403
    assert hosting["state"] == "in_call"
    assert [person["name"] for person in lobby["waiting"]] == ["Nguyễn Văn An"]
    assert admitted.status_code == 200, admitted.get_json()
    assert in_call["state"] == "in_call"
    assert [peer["id"] for peer in in_call["peers"]] == [hosting["participant"]["id"]]


def test_opening_the_visit_again_gives_a_new_link_in_the_same_room(
    app: Flask, people: CallPeople, visit: VideoVisitBooking
) -> None:
    patient = _logged_in(app, people.patient_user.username)
    first = _open(patient, visit.appointment_id)
    second = _open(patient, visit.appointment_id)

    old_link = _call(patient, "post", "join", first)
    new_link = _call(patient, "post", "join", second)

    assert first != second
    assert old_link.status_code == 403
    assert new_link.status_code == 200
    assert len(_rooms_of(app, visit.appointment_id)) == 1


def test_a_parent_linked_to_the_patient_joins_for_them(
    app: Flask, people: CallPeople, visit: VideoVisitBooking, make_user: Callable[..., User]
) -> None:
    parent = make_user("patient", username="me.cua.an", site=None, full_name="Nguyễn Thị Mẹ")
    with get_database(app).session_scope() as session:
        session.add(PatientLink(user_id=parent.id, patient_id=people.patient_id, relationship_code="parent"))
    client = _logged_in(app, parent.username)

    token = _open(client, visit.appointment_id)
    joined = _call(client, "post", "join", token).get_json()

    assert joined["state"] == "waiting"
    assert joined["participant"]["role"] == "patient"
    assert joined["room"]["id"] == _rooms_of(app, visit.appointment_id)[0].id


def test_anyone_else_is_refused_and_the_refusal_is_audited(
    app: Flask, people: CallPeople, visit: VideoVisitBooking, make_user: Callable[..., User]
) -> None:
    with get_database(app).session_scope() as session:
        site = session.scalar(select(Site).where(Site.code == "DIST"))
        assert site is not None
        other_patient_id = create_patient(
            session,
            PatientDetails(full_name="Lê Văn Bình", birth_date=datetime(1970, 1, 1).date(), sex="male"),
            site_id=site.id,
        )
    stranger = make_user("patient", username="binh.le", site=None, patient_id=other_patient_id)
    elsewhere = make_user("doctor", username="bs.trung.uong", site="CENT")
    cashier = make_user("cashier", username="thu.ngan")
    answers = {}
    for user in (stranger, elsewhere, cashier):
        client = _logged_in(app, user.username)
        page = client.get(f"/telehealth/appointments/{visit.appointment_id}")
        posted = client.post(
            f"/telehealth/appointments/{visit.appointment_id}", data={"csrf_token": csrf_token(client, "/")}
        )
        answers[user.username] = (page.status_code, posted.status_code, page.get_data(as_text=True))

    assert {name: codes[:2] for name, codes in answers.items()} == {
        "binh.le": (403, 403),
        "bs.trung.uong": (403, 403),
        "thu.ngan": (403, 403),
    }
    assert _rooms_of(app, visit.appointment_id) == []
    with get_database(app).session_scope() as session:
        denied = session.scalar(
            select(func.count(AuditRecord.id)).where(
                AuditRecord.entity_type == "Appointment",
                AuditRecord.entity_id == visit.appointment_id,
                AuditRecord.outcome == "denied",
            )
        )
    assert denied == 6


def test_an_appointment_that_is_not_a_video_visit_is_not_found(app: Flask, people: CallPeople) -> None:
    in_person = _book(app, people, video=False, doctor=people.doctor)
    patient = _logged_in(app, people.patient_user.username)

    not_video = patient.get(f"/telehealth/appointments/{in_person.appointment_id}")
    unknown = patient.get("/telehealth/appointments/no-such-appointment")

    assert not_video.status_code == 404
    assert unknown.status_code == 404
    assert _rooms_of(app, in_person.appointment_id) == []


def test_a_cancelled_video_visit_says_so(app: Flask, people: CallPeople) -> None:
    # Booking lets a patient cancel until the session starts.
    visit = _book(app, people, doctor=people.doctor, starts_in=timedelta(minutes=5))
    with app.app_context(), get_database(app).session_scope() as session:
        row = session.get(Booking, visit.booking_id)
        assert row is not None
        booking.cancel_booking(session, row)
    patient = _logged_in(app, people.patient_user.username)

    page = patient.get(f"/telehealth/appointments/{visit.appointment_id}")
    posted = patient.post(
        f"/telehealth/appointments/{visit.appointment_id}", data={"csrf_token": csrf_token(patient, "/")}
    )

    assert page.status_code == 410
    assert "Buổi khám video này đã bị huỷ" in page.get_data(as_text=True)
    assert posted.status_code == 410
    assert _rooms_of(app, visit.appointment_id) == []


def test_a_video_visit_the_patient_never_came_to_is_over(
    app: Flask, people: CallPeople, visit: VideoVisitBooking
) -> None:
    patient = _logged_in(app, people.patient_user.username)
    _open(patient, visit.appointment_id)
    with app.app_context(), get_database(app).session_scope() as session:
        released = booking.release_no_shows(session, now=datetime.now(ZONE) + timedelta(days=1))

    page = patient.get(f"/telehealth/appointments/{visit.appointment_id}")

    assert released == 1
    assert page.status_code == 410
    assert "Buổi khám video này đã kết thúc." in page.get_data(as_text=True)


def test_without_a_session_doctor_the_first_doctor_of_the_site_to_open_it_hosts(
    app: Flask, people: CallPeople, make_user: Callable[..., User]
) -> None:
    unassigned = _book(app, people, doctor=None)
    nurse = make_user("nurse", username="dd.hoa")
    second_doctor = make_user("doctor", username="bs.minh")
    roles = {}
    for username in ("dd.hoa", people.doctor.username, "bs.minh"):
        client = _logged_in(app, username)
        token = _open(client, unassigned.appointment_id)
        joined = _call(client, "post", "join", token).get_json()
        roles[username] = (joined["participant"]["role"], joined["state"])

    assert roles == {
        "dd.hoa": ("doctor", "in_call"),
        people.doctor.username: ("host", "in_call"),
        "bs.minh": ("doctor", "in_call"),
    }
    with get_database(app).session_scope() as session:
        hosts = session.scalars(
            select(Participant.user_id)
            .join(Room, Room.id == Participant.room_id)
            .where(Room.appointment_id == unassigned.appointment_id, Participant.role == "host")
        ).all()
    assert hosts == [people.doctor.id]
    assert nurse.id != second_doctor.id


def _web_login(base: str, username: str) -> requests.Session:
    http = requests.Session()
    page = http.get(f"{base}/login", timeout=30).text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    answer = http.post(
        f"{base}/login",
        data={"username": username, "password": TEST_PASSWORD, "csrf_token": match.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code in (302, 303), answer.text[:300]
    return http


def test_two_people_opening_the_visit_at_the_same_moment_share_one_room(
    live_server: LiveServer, app: Flask, people: CallPeople, make_user: Callable[..., User]
) -> None:
    # Nobody is assigned, so both doctors race to create the room and to host it.
    unassigned = _book(app, people, doctor=None)
    make_user("doctor", username="bs.minh")
    path = f"{live_server.url}/telehealth/appointments/{unassigned.appointment_id}"
    openers = [_web_login(live_server.url, name) for name in (people.doctor.username, "bs.minh", "an.nguyen")]
    forms = []
    for http in openers:
        match = re.search(r'name="csrf_token" value="([^"]+)"', http.get(path, timeout=30).text)
        assert match
        forms.append((http, match.group(1)))
    start = threading.Barrier(len(forms))

    def enter(form: tuple[requests.Session, str]) -> requests.Response:
        http, token = form
        start.wait()
        return http.post(path, data={"csrf_token": token}, allow_redirects=False, timeout=60)

    with ThreadPoolExecutor(max_workers=len(forms)) as pool:
        answers = list(pool.map(enter, forms))

    assert [answer.status_code for answer in answers] == [303, 303, 303], [a.text[:300] for a in answers]
    rooms = _rooms_of(app, unassigned.appointment_id)
    assert len(rooms) == 1
    with get_database(app).session_scope() as session:
        roles = sorted(
            session.scalars(select(Participant.role).where(Participant.room_id == rooms[0].id)).all()
        )
    assert roles == ["doctor", "host", "patient"]


def _browser_login(context: Any, base: str, username: str) -> Any:
    page = context.new_page()
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)
    return page


@pytest.mark.e2e
def test_in_chromium_the_patient_follows_the_booking_link_and_the_doctor_admits_them(
    live_server: LiveServer, people: CallPeople, visit: VideoVisitBooking, media_browser: Any
) -> None:
    from tests.telehealth.test_browser import REMOTE_FRAMES, vietnamese

    doctor_context, patient_context = media_browser.new_context(), media_browser.new_context()
    try:
        pages = {}
        for name, context in (("doctor", doctor_context), ("patient", patient_context)):
            username = people.doctor.username if name == "doctor" else people.patient_user.username
            page = _browser_login(context, live_server.url, username)
            page.goto(f"{live_server.url}/telehealth/appointments/{visit.appointment_id}")
            page.get_by_test_id("open-visit").click()
            page.wait_for_url(re.compile(r".*/telehealth/call#.+"))
            page.wait_for_function(
                "() => document.getElementById('local-video').videoWidth > 0", timeout=10_000
            )
            pages[name] = page
        doctor, patient = pages["doctor"], pages["patient"]
        doctor.get_by_test_id("join-button").click()
        doctor.wait_for_function("() => !document.getElementById('controls').hidden", timeout=5_000)
        patient.get_by_test_id("join-button").click()
        patient.wait_for_function(
            "text => document.getElementById('call-status').textContent === text",
            arg=vietnamese(live_server, "Please wait: the doctor will let you in shortly."),
            timeout=5_000,
        )
        lobby_entry = doctor.locator("#lobby-list li", has_text="Nguyễn Văn An")
        lobby_entry.wait_for(timeout=5_000)
        video_before_admission = patient.evaluate(REMOTE_FRAMES)
        lobby_entry.locator("button[data-action=admit]").click()
        for page in (doctor, patient):
            page.wait_for_function(REMOTE_FRAMES, timeout=10_000)

        assert video_before_admission is None
        assert patient.get_by_test_id("call-status").inner_text() == vietnamese(
            live_server, "You are in the call."
        )
        assert doctor.locator("#remote-videos figcaption").inner_text().startswith("Nguyễn Văn An")
    finally:
        doctor_context.close()
        patient_context.close()
