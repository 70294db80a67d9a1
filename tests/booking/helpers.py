"""Helpers for the booking tests: a clinic, bearer headers, row counts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import select

from booking import services
from booking.models import ClinicSession
from his.db import get_database
from his.models import Site

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def local_today() -> date:
    return datetime.now(ZONE).date()


@dataclass
class ClinicInfo:
    id: int
    site_id: int
    room: str


def make_clinic(app: Flask, site_code: str = "DIST", code: str = "PK3", **rules: Any) -> ClinicInfo:
    with app.app_context(), get_database(app).session_scope() as session:
        site = session.scalar(select(Site).where(Site.code == site_code))
        assert site is not None
        department = services.create_department(session, site, code=f"D{code}", name="Khoa Nhi")
        row = services.create_clinic(
            session, department, code=code, name="Phòng khám Nhi 3", room="Phòng khám 3", **rules
        )
        return ClinicInfo(row.id, row.site_id, row.room)


def bearer(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    headers["Idempotency-Key"] = key or uuid.uuid4().hex
    return headers


def count_rows(app: Flask, model: Any, **where: Any) -> int:
    with get_database(app).session_scope() as session:
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return len(session.scalars(query).all())


def session_row(app: Flask, session_id: int) -> ClinicSession:
    with get_database(app).session_scope() as session:
        row = session.get(ClinicSession, session_id)
        assert row is not None
        return row
