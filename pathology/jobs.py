"""Background jobs of the pathology context: build the pyramid of slides that arrived with a single level."""

from __future__ import annotations

import logging
import time

import openslide
from flask import Flask
from sqlalchemy import select, update

from his.db import get_database
from his.events import publish
from his.jobs import register_job
from pathology.models import Slide
from pathology.pyramid import PYRAMID_NAME, build_pyramid
from pathology.store import slide_store
from pathology.uploads import purge_stale_uploads

log = logging.getLogger(__name__)

SLIDES_PER_RUN = 4
PROGRESS_EVERY_SECONDS = 1.0


def build_pending_pyramids(app: Flask) -> list[str]:
    """Build the pyramid of every slide still ``processing`` (a few per run); return the ids made ready.

    Idempotent: a pyramid already on disk is reused, a slide already ready is skipped, and
    a run that stops halfway leaves only a ``.part`` file that the next run replaces. A
    slide OpenSlide cannot read becomes ``failed``.
    """
    store = slide_store(app)
    database = get_database(app)
    # Each step has its own short transaction: building takes long, and on SQLite a read kept
    # open across other connections' progress writes could not become a write afterwards.
    with database.session_scope() as session:
        pending = [
            (slide.id, slide.stored_path, (slide.mpp_x, slide.mpp_y) if slide.mpp_x and slide.mpp_y else None)
            for slide in session.scalars(
                select(Slide)
                .where(Slide.status == "processing")
                .order_by(Slide.created_at)
                .limit(SLIDES_PER_RUN)
            )
        ]
    ready: list[str] = []
    for slide_id, stored_path, mpp in pending:
        source = store.resolve(stored_path)
        target = source.parent / PYRAMID_NAME
        last = [0.0]

        def report(share: float, slide_id: str = slide_id, last: list[float] = last) -> None:
            if time.monotonic() - last[0] < PROGRESS_EVERY_SECONDS and share < 1.0:
                return
            last[0] = time.monotonic()
            with database.session_scope() as progress:
                progress.execute(
                    update(Slide).where(Slide.id == slide_id).values(pyramid_progress=round(share, 3))
                )

        level_count: int | None = None
        try:
            if target != source and not target.exists():
                build_pyramid(source, target, mpp=mpp, progress=report)
            built = openslide.OpenSlide(str(target))
            level_count = built.level_count
            built.close()
        except (openslide.OpenSlideError, OSError):
            log.exception("Could not build the pyramid of slide %s", slide_id)
        with database.session_scope() as session:
            slide = session.get(Slide, slide_id)
            if slide is None or slide.status != "processing":
                continue
            if level_count is None:
                slide.status = "failed"
                continue
            slide.level_count = level_count
            slide.stored_path = store.relative(target)
            slide.status = "ready"
            slide.pyramid_progress = 1.0
            case_id = slide.case_id
        publish("slide.ready", {"slide_id": slide_id, "case_id": case_id})
        ready.append(slide_id)
    return ready


def remove_stale_uploads(app: Flask) -> int:
    """Remove chunked uploads left untouched for a day (idempotent); return how many went."""
    with get_database(app).session_scope() as session:
        return purge_stale_uploads(session, slide_store(app))


register_job("pathology.build_pyramids", build_pending_pyramids, "interval", seconds=15)
register_job("pathology.remove_stale_uploads", remove_stale_uploads, "interval", hours=1)
