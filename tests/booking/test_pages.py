"""The booking pages through the real forms: book, ticket with QR, desk, console, board, demo data."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from booking.demo import load_demo
from booking.models import Booking, Clinic, ClinicSession
from his import demo
from his.db import get_database
from tests.booking.helpers import local_today
from tests.conftest import csrf_token, login


def _book_through_the_form(client, clinic_id, session_id, key="k1"):
    page = client.get(f"/booking/book?clinic={clinic_id}&date={local_today().isoformat()}")
    assert page.status_code == 200
    token = csrf_token(client, f"/booking/book?clinic={clinic_id}")
    return client.post(
        "/booking/book",
        data={"csrf_token": token, "session_id": session_id, "idempotency_key": key, "clinic_id": clinic_id},
    )


def test_a_patient_books_on_the_page_and_sees_number_and_qr(client, app, clinic, make_session, patient_user):
    session_id = make_session(clinic.id)
    user = patient_user()
    login(client, user.username)
    response = _book_through_the_form(client, clinic.id, session_id)
    assert response.status_code == 302
    # A double-clicked submit sends the same key: still one booking.
    again = _book_through_the_form(client, clinic.id, session_id)
    assert again.headers["Location"] == response.headers["Location"]
    assert app.extensions["vetinh.db"].sessionmaker().scalar(select(func.count()).select_from(Booking)) == 1
    ticket = client.get(response.headers["Location"]).get_data(as_text=True)
    assert re.search(r'data-testid="queue-number">1<', ticket)
    assert "<svg" in ticket
    code = re.search(r'data-testid="checkin-code">([^<]+)<', ticket).group(1)
    assert code.startswith("VT")
    mine = client.get("/booking/").get_data(as_text=True)
    assert "Phòng khám Nhi 3" in mine


def test_the_desk_checks_in_and_the_console_calls(client, app, clinic, make_session, patient_user, make_user):
    session_id = make_session(clinic.id)
    user = patient_user()
    login(client, user.username)
    ticket = client.get(_book_through_the_form(client, clinic.id, session_id).headers["Location"]).get_data(
        as_text=True
    )
    code = re.search(r'data-testid="checkin-code">([^<]+)<', ticket).group(1)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/booking/")})

    login(client, make_user("receptionist").username)
    token = csrf_token(client, "/booking/desk")
    # Another last letter of the signature (a code's own last letter is Z once in 32).
    forged_code = code[:-1] + ("Y" if code.endswith("Z") else "Z")
    forged = client.post(
        "/booking/desk/checkin", data={"csrf_token": token, "code": forged_code}, follow_redirects=True
    )
    assert "not issued by this hospital" in forged.get_data(as_text=True) or "không" in forged.get_data(
        as_text=True
    )
    done = client.post(
        "/booking/desk/checkin", data={"csrf_token": token, "code": code}, follow_redirects=True
    )
    assert done.status_code == 200
    walk_in = client.post(
        "/booking/desk/walk-in",
        data={
            "csrf_token": token,
            "session_id": session_id,
            "full_name": "Lê Văn Khách",
            "birth_date": "1990-01-01",
            "sex": "male",
        },
        follow_redirects=True,
    )
    assert walk_in.status_code == 200
    client.post("/logout", data={"csrf_token": token})

    login(client, make_user("doctor").username)
    token = csrf_token(client, f"/booking/console/{session_id}")
    page = client.post(
        f"/booking/console/{session_id}/next", data={"csrf_token": token}, follow_redirects=True
    )
    assert re.search(r'data-testid="serving">1<', page.get_data(as_text=True))
    board = client.get("/booking/board/DIST").get_data(as_text=True)
    assert re.search(rf'data-testid="board-serving-{session_id}">1<', board)
    state = client.get("/booking/board/DIST/state").get_json()
    assert state[0]["serving"] == 1
    assert state[0]["next"] == [11]  # the walk-in, from the walk-in range


def test_demo_data_has_clinics_and_sessions_for_the_coming_days(app, sites, make_user):
    make_user("doctor", username="doctor")
    assert load_demo in [loader for _order, loader in demo._LOADERS]
    with app.app_context(), get_database(app).session_scope() as session:
        load_demo(session, {code: session.merge(site) for code, site in sites.items()})
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Clinic)) == 5
        # One clinic of the district site is seen by video call, and so are all its sessions.
        video_clinics = (
            session.scalars(
                select(Clinic)
                .join(ClinicSession, ClinicSession.clinic_id == Clinic.id)
                .where(ClinicSession.video)
            )
            .unique()
            .all()
        )
        assert [(c.code, c.site.code) for c in video_clinics] == [("PKTX1", "DIST")]
        assert session.scalar(
            select(func.count())
            .select_from(ClinicSession)
            .where(ClinicSession.clinic_id == video_clinics[0].id)
        ) == session.scalar(
            select(func.count())
            .select_from(ClinicSession)
            .where(ClinicSession.clinic_id == video_clinics[0].id, ClinicSession.video)
        )
        days = set(session.scalars(select(ClinicSession.day)))
        # Six working days a week, two sessions a day, over the coming week.
        assert len(days) >= 5
        assert min(days) >= local_today()
