"""Load the booking demo data: departments, clinics, a weekly timetable and the coming days' sessions."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from booking import services
from booking.models import Closure
from his.demo import register_demo_loader
from his.models import Site, User

DEMO_CLINICS = (
    # site, department code, department, clinic code, clinic, room, numbering, visit fee code
    ("DIST", "NHI", "Khoa Nhi", "PKNHI1", "Phòng khám Nhi 1", "Phòng khám 1", "split", "KB.NHI"),
    ("DIST", "NHI", "Khoa Nhi", "PKNHI2", "Phòng khám Nhi 2", "Phòng khám 2", "alternate", "KB.NHI"),
    ("DIST", "NOI", "Khoa Nội", "PKNOI3", "Phòng khám Nội 3", "Phòng khám 3", "split", "KB.NOI"),
    ("CENT", "NHI", "Khoa Nhi", "PKNHI5", "Phòng khám Nhi 5", "Phòng khám 5", "split", "KB.NHI"),
    # Seen by video call (telehealth): every session of this clinic is a video session.
    ("DIST", "NOI", "Khoa Nội", "PKTX1", "Phòng khám Nội từ xa", "Khám trực tuyến", "split", "KB.NOI"),
)
VIDEO_CLINICS = {"PKTX1"}
MORNING = (time(7, 0), time(11, 30))
AFTERNOON = (time(13, 30), time(16, 30))
DEMO_DAYS = 7


def _zone() -> ZoneInfo:
    name = current_app.extensions["vetinh.settings"].timezone if has_app_context() else "Asia/Ho_Chi_Minh"
    return ZoneInfo(name)


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Create the demo clinics (one seen by video call) with Monday-to-Saturday timetables and a week of sessions."""
    departments = {}
    zone = _zone()
    for site_code, dep_code, dep_name, code, name, room, numbering, visit_code in DEMO_CLINICS:
        site = sites[site_code]
        key = (site_code, dep_code)
        if key not in departments:
            departments[key] = services.create_department(session, site, code=dep_code, name=dep_name)
        doctor_name = "doctor" if site_code == "DIST" else "central.doctor"
        doctor = session.scalar(select(User).where(User.username == doctor_name))
        clinic = services.create_clinic(
            session,
            departments[key],
            code=code,
            name=name,
            room=room,
            numbering=numbering,
            online_capacity=40,
            walkin_capacity=20,
            minutes_per_patient=5,
            visit_code=visit_code,
        )
        for weekday in range(6):
            for part, (starts, ends) in (("morning", MORNING), ("afternoon", AFTERNOON)):
                services.add_weekly_template(
                    session,
                    clinic,
                    weekday=weekday,
                    part=part,
                    starts=starts,
                    ends=ends,
                    doctor_id=doctor.id if doctor else None,
                    video=code in VIDEO_CLINICS,
                )
    today = datetime.now(zone).date()
    # New Year's Day as an example of a holiday that no template overrides.
    for site in sites.values():
        session.add(
            Closure(
                site_id=site.id, clinic_id=None, day=today.replace(month=1, day=1), reason="Tết Dương lịch"
            )
        )
    session.flush()
    services.generate_sessions(session, today=today, days=DEMO_DAYS, zone=zone)


register_demo_loader(load_demo, order=50)
