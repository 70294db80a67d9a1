"""Small factories for records tests: a checked-in patient at the district site and its doctor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from fhir import services as store
from his.db import get_database
from his.models import Site, User
from his.patients import PatientDetails, create_patient
from his.records.services import Actor


@dataclass
class Visit:
    patient_id: str
    encounter_id: str


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    """Give a session inside an app context; the test commits what it wants kept."""
    with app.app_context():
        db = get_database(app).sessionmaker()
        try:
            yield db
        finally:
            db.rollback()
            db.close()


@contextmanager
def unit_of_work(app: Flask) -> Iterator[Session]:
    """Give a session inside an app context that commits on leaving (then the context is gone,
    so test-client requests afterwards get their own)."""
    with app.app_context(), get_database(app).session_scope() as db:
        yield db


def actor_of(user: User) -> Actor:
    return Actor(user.id, user.username, user.full_name, user.site_id, user.role)


@pytest.fixture
def make_visit(app: Flask, sites: dict[str, Site]) -> Callable[..., Visit]:
    """Register a patient at a site and check them in today (an arrived Encounter)."""

    def factory(
        *,
        site: str = "DIST",
        birth_date: date = date(1975, 3, 14),
        name: str = "Nguyễn Văn An",
        queue: int = 1,
        **extra: Any,
    ) -> Visit:
        with get_database(app).session_scope() as db:
            site_row = db.query(Site).filter_by(code=site).one()
            patient_id = create_patient(
                db,
                PatientDetails(
                    full_name=name,
                    birth_date=birth_date,
                    sex=extra.get("sex", "male"),
                    address="Thôn 1, xã Vệ Tinh",
                ),
                site_id=site_row.id,
            )
            resource: dict[str, Any] = {
                "resourceType": "Encounter",
                "status": "arrived",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{patient_id}"},
                "period": {"start": datetime.now(UTC).isoformat(timespec="seconds")},
            }
            if extra.get("clinic"):
                # As booking checks a patient in: the queue number is on the Appointment.
                location = store.create(db, {"resourceType": "Location", "name": extra["clinic"]})
                appointment = store.create(
                    db,
                    {
                        "resourceType": "Appointment",
                        "status": "arrived",
                        "identifier": [{"system": "urn:vetinh:booking:queue-number", "value": str(queue)}],
                        "participant": [
                            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"}
                        ],
                    },
                )
                resource["appointment"] = [{"reference": f"Appointment/{appointment.id}"}]
                resource["location"] = [{"location": {"reference": f"Location/{location.id}"}}]
            else:
                resource["identifier"] = [{"system": "urn:vetinh:queue-number", "value": str(queue)}]
            encounter = store.create(db, resource)
        return Visit(patient_id, encounter.id)

    return factory
