"""Background jobs of the telehealth context: end calls whose time is up."""

from __future__ import annotations

from flask import Flask

from his.db import get_session
from his.jobs import register_job
from telehealth.services import end_overdue_rooms


def end_overdue_calls(app: Flask) -> list[str]:
    """End every call past its grace period and tell its participants (idempotent)."""
    return end_overdue_rooms(get_session())


register_job("telehealth.end_overdue_calls", end_overdue_calls, "interval", seconds=30)
