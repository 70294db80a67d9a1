"""Fixtures for the booking tests: clinics with sessions, patients, patient accounts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from sqlalchemy import select

from booking import services
from booking.models import Clinic
from his.db import get_database
from his.models import PatientLink, Site, User
from his.patients import PatientDetails, create_patient
from tests.booking.helpers import ZONE, ClinicInfo, local_today, make_clinic
from tests.conftest import TEST_PASSWORD

# A real argon2id hash, with low cost parameters: the booking tests create dozens of
# accounts, and the default parameters cost a third of a second each.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TEST_PASSWORD_HASH = CHEAP_HASHER.hash(TEST_PASSWORD)


@pytest.fixture
def make_user(app: Flask, sites: dict[str, Site]) -> Callable[..., User]:
    """Create an account that logs in with the test password (staff at the district site by default)."""
    counter = iter(range(1, 100_000))

    def factory(
        role: str = "doctor", *, username: str | None = None, site: str | None = "DIST", **extra: Any
    ) -> User:
        with get_database(app).session_scope() as session:
            site_row = (
                session.scalar(select(Site).where(Site.code == site)) if role != "patient" and site else None
            )
            user = User(
                username=username or f"{role}{next(counter)}",
                password_hash=TEST_PASSWORD_HASH,
                full_name=extra.pop("full_name", f"Test {role.title()}"),
                role=role,
                site_id=site_row.id if site_row else None,
                active=True,
                **extra,
            )
            session.add(user)
            session.flush()
            session.expunge(user)
        return user

    return factory


@pytest.fixture
def clinic(app: Flask, sites: dict[str, Site]) -> ClinicInfo:
    """Create a department and clinic at the district site, numbered online 1…N, walk-in N+1…."""
    return make_clinic(app, "DIST")


@pytest.fixture
def make_session(app: Flask) -> Callable[..., int]:
    """Open a session of a clinic; by default today, all day long (so its window is open now)."""

    def factory(
        clinic_id: int,
        *,
        day: date | None = None,
        part: str = "morning",
        starts: time = time(0, 0),
        ends: time | None = None,
        online: int = 10,
        walkin: int = 5,
        minutes: int = 5,
        doctor_id: int | None = None,
        video: bool = False,
    ) -> int:
        if day is not None and day > local_today() and starts == time(0, 0):
            # A later day's session starts in the morning, so its cancel cutoff (an hour
            # before the start) is not reached in the last hour of today.
            starts = time(7, 0)
        with app.app_context(), get_database(app).session_scope() as session:
            row = services.create_session(
                session,
                session.get(Clinic, clinic_id),  # type: ignore[arg-type]
                day=day or local_today(),
                part=part,
                starts=starts,
                ends=ends or time(23, 59),
                zone=ZONE,
                doctor_id=doctor_id,
                online_capacity=online,
                walkin_capacity=walkin,
                minutes_per_patient=minutes,
                video=video,
            )
            if day is None and ends is None:
                # "All day long" must still hold in the day's last hour, when the window
                # (closing 30 minutes before the end) and the cancel cutoffs would have passed:
                # the default session runs on until 06:00 the next morning.
                row.ends_at = datetime.combine(row.day + timedelta(days=1), time(6, 0), ZONE)
            return row.id

    return factory


@pytest.fixture
def make_patient(app: Flask, sites: dict[str, Site]) -> Callable[..., str]:
    """Register a patient cared for at the district site; return the Patient id."""
    counter = iter(range(1, 100_000))

    def factory(name: str | None = None, *, email: str | None = None, phone: str | None = None) -> str:
        with app.app_context(), get_database(app).session_scope() as session:
            site = session.scalar(select(Site).where(Site.code == "DIST"))
            return create_patient(
                session,
                PatientDetails(
                    name or f"Nguyễn Văn {next(counter)}",
                    date(2015, 1, 1),
                    "male",
                    phone=phone,
                    email=email,
                ),
                site_id=site.id if site else None,
            )

    return factory


@pytest.fixture
def patient_user(
    app: Flask, make_user: Callable[..., User], make_patient: Callable[..., str]
) -> Callable[..., User]:
    """Create a patient account for a new Patient (optionally linked to more patients, as a parent)."""

    def factory(*, children: tuple[str, ...] = (), email: str | None = None) -> User:
        patient_id = make_patient(email=email)
        user = make_user("patient")
        with get_database(app).session_scope() as session:
            row = session.get(User, user.id)
            assert row is not None
            row.patient_id = patient_id
            for child in children:
                session.add(PatientLink(user_id=user.id, patient_id=child))
        user.patient_id = patient_id
        return user

    return factory
