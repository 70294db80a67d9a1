"""Load the telehealth demo: a video visit and a scheduled consultation, open for the next hours."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from his.db import utcnow
from his.demo import register_demo_loader
from his.models import Site, User
from his.security import principal_for_user
from telehealth import services


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Give the demo doctor a video visit with the demo patient and a consultation with the central doctor.

    Both start now and last four hours, so "Video calls" shows them right after ``vetinh demo``.
    """
    users = {
        u.username: u
        for u in session.scalars(
            select(User).where(User.username.in_(("doctor", "patient", "central.doctor", "central.manager")))
        )
    }
    doctor, patient = users.get("doctor"), users.get("patient")
    if doctor is None or patient is None or patient.patient_id is None:
        return
    now = utcnow()
    services.create_visit_room(
        session,
        principal_for_user(doctor),
        patient_id=patient.patient_id,
        appointment_id=None,
        planned_start=now,
        duration_minutes=240,
    )
    coordinator, specialist = users.get("central.manager"), users.get("central.doctor")
    if coordinator is None or specialist is None:
        return
    request = services.create_consult_request(
        session,
        principal_for_user(doctor),
        services.ConsultInput(
            patient_id=patient.patient_id,
            reason="Đau ngực khi gắng sức, nghi bệnh mạch vành",
            summary="Nam 41 tuổi, đau ngực trái 2 tuần khi leo cầu thang. ECG: ST chênh xuống nhẹ V4–V6.",
        ),
    )
    services.schedule_consult(
        session,
        principal_for_user(coordinator),
        request.id,
        specialist_user_id=specialist.id,
        planned_start=now,
        duration_minutes=240,
        include_patient=True,
    )


register_demo_loader(load_demo, order=60)
