"""A booking rush against a live server: no duplicate number, no lost number, one booking per key."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from sqlalchemy import func, select

from booking.models import Booking, SessionCounter
from fhir.models import FhirResource
from his.db import get_database
from his.patients import PatientDetails, create_patient
from tests.booking.helpers import make_clinic

ON_POSTGRES = os.environ.get("VETINH_TEST_BACKEND", "sqlite") == "postgresql"
# SQLite serialises every writer behind one lock, so the rush there is smaller.
RUSH = (200, 100) if ON_POSTGRES else (40, 20)


def _patients(app: Any, count: int) -> list[str]:
    from datetime import date

    from his.models import Site

    with get_database(app).session_scope() as session:
        site = session.scalar(select(Site).where(Site.code == "DIST"))
        assert site is not None
        return [
            create_patient(
                session, PatientDetails(f"Bệnh nhân {i}", date(2018, 1, 1), "female"), site_id=site.id
            )
            for i in range(count)
        ]


def _post_all(url: str, jobs: list[tuple[dict[str, Any], dict[str, str]]]) -> list[requests.Response]:
    start = threading.Barrier(len(jobs))

    def send(job: tuple[dict[str, Any], dict[str, str]]) -> requests.Response:
        body, headers = job
        with requests.Session() as http:
            start.wait()
            return http.post(url, json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(send, jobs))


def test_a_rush_gives_exactly_the_online_numbers_once(
    live_server, app, sites, make_session, make_user, make_token
):
    requests_count, online = RUSH
    clinic = make_clinic(app)
    session_id = make_session(clinic.id, online=online, walkin=10)
    token = make_token(make_user("receptionist"), "user/*.*")
    patients = _patients(app, requests_count)
    jobs = [
        (
            {"session_id": session_id, "patient_id": patient_id},
            {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        )
        for patient_id in patients
    ]
    responses = _post_all(f"{live_server.url}/api/v1/bookings", jobs)

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: online, 409: requests_count - online}, [
        r.text for r in responses if r.status_code not in (201, 409)
    ][:3]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"SESSION_FULL"}
    numbers = sorted(r.json()["queue_number"] for r in responses if r.status_code == 201)
    assert numbers == list(range(1, online + 1))
    answered = {r.json()["id"] for r in responses if r.status_code == 201}
    with get_database(app).session_scope() as session:
        stored = session.execute(
            select(Booking.id, Booking.queue_number).where(Booking.session_id == session_id)
        ).all()
        assert {row.id for row in stored} == answered
        assert sorted(row.queue_number for row in stored) == numbers
        assert session.get(SessionCounter, session_id).online_issued == online
        appointments = session.scalar(
            select(func.count()).select_from(FhirResource).where(FhirResource.res_type == "Appointment")
        )
        assert appointments == online


def test_twenty_concurrent_requests_with_one_key_make_one_booking(
    live_server, app, sites, make_session, make_user, make_token
):
    clinic = make_clinic(app)
    session_id = make_session(clinic.id, online=50)
    token = make_token(make_user("receptionist"), "user/*.*")
    (patient_id,) = _patients(app, 1)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "rush-" + uuid.uuid4().hex}
    responses = _post_all(
        f"{live_server.url}/api/v1/bookings",
        [({"session_id": session_id, "patient_id": patient_id}, headers)] * 20,
    )
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201][
        :3
    ]
    assert {r.json()["id"] for r in responses} == {responses[0].json()["id"]}
    assert {r.json()["queue_number"] for r in responses} == {1}
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Booking)) == 1
        assert session.get(SessionCounter, session_id).online_issued == 1
