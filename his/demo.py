"""Load the demo data once: two sites, a user for every role, a patient account, some patients.

Other contexts add their own demo data (clinics and sessions, catalogues, prices) with
``register_demo_loader``; each loader gets the session and the sites and must be written
so that it can run once on an empty database.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from his.accounts import NewUser, create_user
from his.models import ROLES, Site, User
from his.patients import PatientDetails, create_patient

DemoLoader = Callable[[Session, dict[str, Site]], None]
_LOADERS: list[tuple[int, DemoLoader]] = []

DEMO_SITES = (
    {"code": "DIST", "name": "Bệnh viện Đa khoa huyện Vệ Tinh", "kind": "district", "facility_code": "01234"},
    {"code": "CENT", "name": "Bệnh viện Trung ương Vệ Tinh", "kind": "central", "facility_code": "01001"},
)

DEMO_STAFF_NAMES = {
    "receptionist": "Nguyễn Thị Lan",
    "nurse": "Trần Thị Hoa",
    "doctor": "Lê Văn Minh",
    "pharmacist": "Phạm Thu Hà",
    "pathologist": "Hoàng Đức Anh",
    "cashier": "Vũ Thị Mai",
    "manager": "Đặng Quốc Bảo",
    "admin": "Bùi Văn Nam",
}

DEMO_PATIENTS = (
    PatientDetails("Nguyễn Văn An", date(1985, 3, 14), "male", "0912345678", None, "001085012345"),
    PatientDetails("Trần Thị Bình", date(1992, 7, 2), "female", "0987654321", None, "079192004321"),
    PatientDetails("Lê Hoàng Cường", date(1958, 11, 30), "male", "0903111222", None, None),
    PatientDetails("Phạm Ngọc Diệp", date(2021, 5, 9), "female", "0934555666", None, None),
    PatientDetails("Võ Minh Đức", date(1976, 1, 20), "male", "0977888999", None, "048076123456"),
)


def register_demo_loader(loader: DemoLoader, order: int = 100) -> None:
    """Add a context's demo loader (runs after the platform's, by ``order``)."""
    if all(existing is not loader for _o, existing in _LOADERS):
        _LOADERS.append((order, loader))
        _LOADERS.sort(key=lambda item: item[0])


def already_loaded(session: Session) -> bool:
    """Tell whether the database already has users (demo data loads only into an empty one)."""
    return (session.scalar(select(func.count()).select_from(User)) or 0) > 0


def load(session: Session, app: Flask, password: str | None = None) -> list[tuple[str, str]]:
    """Load every demo record and return the (username, password) pairs to show once."""
    sites: dict[str, Site] = {}
    for spec in DEMO_SITES:
        site = Site(**spec)
        session.add(site)
        sites[spec["code"]] = site
    session.flush()

    accounts: list[tuple[str, str]] = []

    def make(username: str, role: str, full_name: str, site: Site | None, **extra: Any) -> User:
        secret = password or secrets.token_urlsafe(9)
        user = create_user(
            session,
            NewUser(
                username=username,
                password=secret,
                full_name=full_name,
                role=role,
                site_code=site.code if site else None,
                **extra,
            ),
        )
        accounts.append((username, secret))
        return user

    for role in ROLES:
        if role == "patient":
            continue
        make(role, role, DEMO_STAFF_NAMES[role], sites["DIST"])
    for role in ROLES:
        if role == "patient":
            continue
        make(f"central.{role}", role, DEMO_STAFF_NAMES[role] + " (TW)", sites["CENT"])

    patient_ids = [create_patient(session, details, site_id=sites["DIST"].id) for details in DEMO_PATIENTS]
    first = DEMO_PATIENTS[0]
    patient_user = make(
        "patient",
        "patient",
        first.full_name,
        None,
        birth_date=first.birth_date,
        sex=first.sex,
        phone=first.phone,
    )
    patient_user.patient_id = patient_ids[0]

    for _order, loader in _LOADERS:
        loader(session, sites)
    session.flush()
    return accounts
