"""Stop a call's recording: the media service finishes the files, the record links them."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from his.errors import VetinhError
from telehealth import media, services
from telehealth.models import Room

log = logging.getLogger(__name__)


def stop_recording(session: Session, room: Room, reason: str) -> list[str]:
    """Stop recording a call (if it is recorded); return the DocumentReference ids made.

    A media service that does not answer is logged: the room is marked as no longer
    recording either way, and the files it finished later stay in file storage.
    """
    if room.recording_started_at is None:
        return []
    try:
        written = media.media_request("stop", {"prefix": f"{room.id}:"}).get("recordings", {})
    except VetinhError:
        log.exception("The media service did not stop the recordings of call %s", room.id)
        written = {}
    settings = current_app.extensions["vetinh.settings"]
    return services.finish_recording(session, room, written, settings.data_dir, reason)
