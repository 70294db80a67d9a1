"""Give telehealth tests rooms to call in: a district doctor, a patient, central staff."""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from his.accounts import hash_password
from his.db import get_database
from his.models import Site, User
from his.patients import PatientDetails, create_patient
from tests.conftest import TEST_PASSWORD

REDIS_URL = os.environ.get("VETINH_TEST_REDIS_URL", "")


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    """Start Playwright once: its sync API cannot be started twice in one thread."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip(reason=f"{CHROMIUM} is missing: install Debian's chromium to run browser tests")
    with sync_playwright() as instance:
        yield instance


def launch_chromium(playwright: Any, *extra: str) -> Any:
    """Launch Debian's Chromium with the suite's flags and ``extra`` ones."""
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra])


@pytest.fixture(scope="session")
def media_browser(playwright: Any) -> Iterator[Any]:
    """Start one Chromium with fake camera and microphone for every call-page test."""
    from tests.browser import MEDIA_ARGS

    browser = launch_chromium(playwright, *MEDIA_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def call_pages(media_browser: Any) -> Iterator[Any]:
    """Give a test its own browser context (its pages close with it)."""
    context = media_browser.new_context()
    yield context
    context.close()


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Use no STUN server (every peer is on this machine); notice closed streams within a second."""
    return {**settings_overrides, "ice_servers": "", "telehealth_sse_keepalive": 0.5}


@dataclass
class CallPeople:
    """The people of a call and the bearer tokens they use the API with."""

    doctor: User
    doctor_token: str
    patient_id: str
    patient_user: User
    specialist: User
    coordinator: User
    coordinator_token: str


@functools.cache
def _password_hash() -> str:
    # One argon2 hash for the whole run: hashing per user would cost a third of a second each.
    return hash_password(TEST_PASSWORD)


def _user(
    session: Any, sites: dict[str, Site], role: str, username: str, full_name: str, **extra: Any
) -> User:
    site = extra.pop("site", "DIST")
    user = User(
        username=username,
        password_hash=_password_hash(),
        full_name=full_name,
        role=role,
        site_id=sites[site].id if role != "patient" else None,
        **extra,
    )
    session.add(user)
    session.flush()
    session.expunge(user)
    return user


@pytest.fixture
def people(app: Flask, sites: dict[str, Site], make_token: Callable[..., str]) -> CallPeople:
    """Create a district doctor with a patient, and a central coordinator and specialist."""
    with app.app_context(), get_database(app).session_scope() as session:
        patient_id = create_patient(
            session,
            PatientDetails(full_name="Nguyễn Văn An", birth_date=datetime(1960, 5, 1).date(), sex="male"),
            site_id=sites["DIST"].id,
        )
        doctor = _user(session, sites, "doctor", "bs.lan", "Trần Thị Lan")
        patient_user = _user(session, sites, "patient", "an.nguyen", "Nguyễn Văn An", patient_id=patient_id)
        specialist = _user(session, sites, "doctor", "bs.hung", "Phạm Văn Hùng", site="CENT")
        coordinator = _user(session, sites, "manager", "dieu.phoi", "Lê Thu Hà", site="CENT")
    return CallPeople(
        doctor=doctor,
        doctor_token=make_token(doctor),
        patient_id=patient_id,
        patient_user=patient_user,
        specialist=specialist,
        coordinator=coordinator,
        coordinator_token=make_token(coordinator),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def soon(minutes: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def visit_room(client: FlaskClient, people: CallPeople) -> dict[str, Any]:
    """Create a video visit starting now: the doctor hosts, the patient waits in the lobby."""
    response = client.post(
        "/api/v1/telehealth/rooms",
        json={"patient_id": people.patient_id, "planned_start": soon(), "duration_minutes": 20},
        headers=bearer(people.doctor_token),
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


@pytest.fixture
def consult_room(client: FlaskClient, people: CallPeople) -> dict[str, Any]:
    """Have the district doctor ask for a consult and the central coordinator schedule it now."""
    asked = client.post(
        "/api/v1/telehealth/consults",
        json={
            "patient_id": people.patient_id,
            "reason": "Đau ngực không điển hình",
            "summary": "Nam 66 tuổi, ECG có ST chênh xuống nhẹ ở V4-V6.",
        },
        headers=bearer(people.doctor_token),
    )
    assert asked.status_code == 201, asked.get_json()
    scheduled = client.post(
        f"/api/v1/telehealth/consults/{asked.get_json()['id']}/schedule",
        json={"specialist_id": people.specialist.id, "planned_start": soon(), "duration_minutes": 30},
        headers=bearer(people.coordinator_token),
    )
    assert scheduled.status_code == 201, scheduled.get_json()
    return dict(scheduled.get_json())


def link_of(room: dict[str, Any], role: str) -> str:
    """Return the join token of the first participant with this role."""
    return next(link["token"] for link in room["links"] if link["role"] == role)


def call_headers(token: str) -> dict[str, str]:
    return {"X-Call-Token": token}


def random_token() -> str:
    return secrets.token_urlsafe(32)
