"""Background jobs of the telehealth context: end calls whose time is up."""

from __future__ import annotations

from flask import Flask

from his.db import get_session
from his.jobs import register_job
from telehealth import services
from telehealth.recording import stop_recording


def end_overdue_calls(app: Flask) -> list[str]:
    """End every call past its grace period, stopping its recording, and tell its participants (idempotent)."""
    session = get_session()
    ended = []
    for room in services.overdue_rooms(session):
        stop_recording(session, room, "time")
        if services.end_room(session, room, "time"):
            ended.append(room.id)
    return ended


register_job("telehealth.end_overdue_calls", end_overdue_calls, "interval", seconds=30)
