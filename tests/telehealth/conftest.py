"""Give telehealth tests rooms to call in: a district doctor, a patient, central staff."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from his.db import get_database
from his.models import Site, User
from his.patients import PatientDetails, create_patient

REDIS_URL = os.environ.get("VETINH_TEST_REDIS_URL", "")


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Use no STUN server (every peer is on this machine); notice closed streams within a second."""
    extra = {**settings_overrides.get("extra", {}), "telehealth_sse_keepalive": 0.5}
    return {**settings_overrides, "ice_servers": "", "extra": extra}


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


@pytest.fixture
def people(
    app: Flask, sites: dict[str, Site], make_user: Callable[..., User], make_token: Callable[..., str]
) -> CallPeople:
    """Create a district doctor with a patient, and a central coordinator and specialist."""
    doctor = make_user("doctor", username="bs.lan", full_name="Trần Thị Lan")
    with app.app_context(), get_database(app).session_scope() as session:
        patient_id = create_patient(
            session,
            PatientDetails(full_name="Nguyễn Văn An", birth_date=datetime(1960, 5, 1).date(), sex="male"),
            site_id=sites["DIST"].id,
        )
    patient_user = make_user(
        "patient", username="an.nguyen", full_name="Nguyễn Văn An", patient_id=patient_id
    )
    specialist = make_user("doctor", username="bs.hung", full_name="Phạm Văn Hùng", site="CENT")
    coordinator = make_user("manager", username="dieu.phoi", full_name="Lê Thu Hà", site="CENT")
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
