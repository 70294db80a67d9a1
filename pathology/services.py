"""Decide who may see or add slides, find them, and describe them for the API."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from flask import Flask, current_app
from sqlalchemy.orm import Session

from his import audit
from his.errors import N_, Conflict, Forbidden, NotFound
from his.models import Site
from his.security import Principal
from pathology.fhir_mapping import imaging_study
from pathology.models import ConsultCase, Slide
from pathology.pyramid import needs_pyramid
from pathology.store import slide_store

UPLOAD_ROLES = frozenset({"doctor", "nurse", "pathologist"})
READ_ROLES = frozenset({"doctor", "nurse", "pathologist"})
CONSULT_READ_ROLES = frozenset({"pathologist"})
LABEL_ROLES = frozenset({"doctor", "pathologist"})


class SlideNotFound(NotFound):
    code = "SLIDE_NOT_FOUND"
    message = N_("There is no such slide.")


class SlideNotReady(Conflict):
    code = "SLIDE_NOT_READY"
    message = N_("The slide is still being prepared for viewing; it opens when it is ready.")


class SlideAccessDenied(Forbidden):
    code = "SLIDE_ACCESS_DENIED"
    message = N_("You may not see this slide.")


def slide_reader_roles(session: Session, slide: Slide) -> dict[int, frozenset[str]]:
    """Return, per site, the roles whose staff may see a slide.

    The uploading site's clinical staff; for a slide of a consult, also the requesting
    site's clinical staff and the receiving site's pathologists.
    """
    readers: dict[int, frozenset[str]] = {slide.site_id: READ_ROLES}
    if slide.case_id:
        case = session.get(ConsultCase, slide.case_id)
        if case is not None:
            readers[case.requesting_site_id] = READ_ROLES
            readers[case.receiving_site_id] = (
                readers.get(case.receiving_site_id, frozenset()) | CONSULT_READ_ROLES
            )
    return readers


def slide_site_ids(session: Session, slide: Slide) -> set[int]:
    """Return the sites whose staff may see a slide: the uploading site and, in a consult, both ends."""
    return set(slide_reader_roles(session, slide))


def may_read_slide(session: Session, principal: Principal, slide: Slide) -> bool:
    """Tell whether the principal may see a slide and its tiles."""
    return readers_admit(principal, slide_reader_roles(session, slide))


def readers_admit(principal: Principal, readers: dict[int, frozenset[str]]) -> bool:
    """Tell whether a slide's readers (roles per site, see slide_reader_roles) include the principal."""
    if not principal.is_authenticated or not principal.allows("ImagingStudy", "read"):
        return False
    if principal.site_id is None:
        return False
    roles = readers.get(principal.site_id)
    if roles is None:
        return False
    return principal.kind != "user" or principal.role in roles


def may_see_label(session: Session, principal: Principal, slide: Slide) -> bool:
    """Tell whether the principal may see the slide's label image, which can carry patient identifiers.

    Only doctors and pathologists who may see the slide, signed in as themselves, do.
    """
    return (
        principal.kind == "user"
        and principal.role in LABEL_ROLES
        and may_read_slide(session, principal, slide)
    )


def slide_patient_id(session: Session, slide: Slide) -> str | None:
    """Return the patient of a slide in a consult case, for the audit trail."""
    if not slide.case_id:
        return None
    case = session.get(ConsultCase, slide.case_id)
    return case.patient_id if case is not None else None


def get_slide(session: Session, slide_id: str) -> Slide:
    """Return a slide by id.

    Raises SlideNotFound for an unknown or malformed id.
    """
    if not (len(slide_id) == 32 and all(c in "0123456789abcdef" for c in slide_id)):
        raise SlideNotFound()
    slide = session.get(Slide, slide_id)
    if slide is None:
        raise SlideNotFound()
    return slide


def readable_slide(
    session: Session, principal: Principal, slide_id: str, *, audit_read: bool = True
) -> Slide:
    """Return a slide the principal may see, auditing the read.

    Raises SlideNotFound for an unknown id and SlideAccessDenied (audited) for a slide
    of a site the principal does not belong to.
    """
    slide = get_slide(session, slide_id)
    if not may_read_slide(session, principal, slide):
        audit.record("read", "Slide", slide.id, outcome="denied", detail="slide of another site")
        raise SlideAccessDenied()
    if audit_read:
        audit.record("read", "Slide", slide.id)
    return slide


@dataclass(frozen=True)
class SlideView:
    """What serving a slide's tiles needs to know, read from the database at ``loaded_at``."""

    id: str
    status: str
    stored_path: str
    sha256: str
    readers: dict[int, frozenset[str]]
    tile_key: str
    loaded_at: float

    @cached_property
    def path(self) -> Path:
        """The slide's file. Raises PathEscapesStore when the stored path leads out of the store."""
        return slide_store().resolve(self.stored_path)


class SlideViewCache:
    """Remember up to ``capacity`` slides' tile views for ``ttl`` seconds, so tiles need no query.

    The access decision itself is made on every request from the remembered readers; a
    change to who may read a slide (or to its file) reaches every process within ``ttl``.
    """

    def __init__(self, ttl: float, capacity: int = 1024) -> None:
        self.ttl = ttl
        self.capacity = max(1, capacity)
        self._views: OrderedDict[str, SlideView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slide_id: str) -> SlideView | None:
        """Return a view read less than ``ttl`` seconds ago, or None."""
        with self._lock:
            view = self._views.get(slide_id)
            if view is None:
                return None
            if time.monotonic() - view.loaded_at >= self.ttl:
                del self._views[slide_id]
                return None
            self._views.move_to_end(slide_id)
            return view

    def put(self, view: SlideView) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._views[view.id] = view
            self._views.move_to_end(view.id)
            while len(self._views) > self.capacity:
                self._views.popitem(last=False)

    def forget(self, slide_id: str) -> None:
        """Drop a slide's view after this process changed the slide."""
        with self._lock:
            self._views.pop(slide_id, None)


DEFAULT_SLIDE_VIEW_TTL = 5.0
_views_lock = threading.Lock()


def slide_views(app: Flask | None = None) -> SlideViewCache:
    """Return the app's slide view cache, its TTL from ``PATHOLOGY_SLIDE_VIEW_TTL`` (seconds)."""
    target = app or current_app
    views = target.extensions.get("vetinh.pathology.views")
    if views is None:
        with _views_lock:
            views = target.extensions.get("vetinh.pathology.views")
            if views is None:
                ttl = float(target.config.get("PATHOLOGY_SLIDE_VIEW_TTL", DEFAULT_SLIDE_VIEW_TTL))
                views = target.extensions["vetinh.pathology.views"] = SlideViewCache(ttl)
    return views


def load_slide_view(session: Session, slide_id: str) -> SlideView:
    """Read a slide's tile view from the database.

    Raises SlideNotFound for an unknown or malformed id.
    """
    slide = get_slide(session, slide_id)
    return SlideView(
        id=slide.id,
        status=slide.status,
        stored_path=slide.stored_path,
        sha256=slide.sha256,
        readers=slide_reader_roles(session, slide),
        tile_key=tile_key(slide),
        loaded_at=time.monotonic(),
    )


def viewable_slide(session: Session, principal: Principal, slide_id: str) -> SlideView:
    """Return the tile view of a ready slide the principal may see, checking access on every call.

    A view remembered from the last few seconds is used when it admits the principal and
    the slide is ready; otherwise the slide is read again, so a new reader or a slide that
    has just become ready is never refused on old information.

    Raises SlideNotFound for an unknown id, SlideAccessDenied (audited) for a slide the
    principal may not see, SlideNotReady while its pyramid is being built.
    """
    views = slide_views()
    view = views.get(slide_id)
    if view is not None and view.status == "ready" and readers_admit(principal, view.readers):
        return view
    view = load_slide_view(session, slide_id)
    views.put(view)
    if not readers_admit(principal, view.readers):
        audit.record("read", "Slide", view.id, outcome="denied", detail="slide of another site")
        raise SlideAccessDenied()
    if view.status != "ready":
        raise SlideNotReady()
    return view


def tile_key(slide: Slide) -> str:
    """Name the slide's file for the tile server's caches: a rebuilt pyramid is a new file with new tiles."""
    return f"{slide.id}:{PurePosixPath(slide.stored_path).name}"


def ensure_viewable(slide: Slide) -> None:
    """Raise SlideNotReady while the slide's pyramid is being built (or failed)."""
    if slide.status != "ready":
        raise SlideNotReady()


def queue_pyramid(slide: Slide, min_side: int) -> bool:
    """Mark a newly accepted single-level slide for the pyramid-building job; tell whether it was."""
    if slide.status == "ready" and needs_pyramid(slide.level_count, slide.width, slide.height, min_side):
        slide.status = "processing"
        slide.pyramid_progress = 0.0
        return True
    return False


def ensure_may_upload(session: Session, principal: Principal) -> Site:
    """Return the site a principal uploads slides for.

    Raises Forbidden (audited) for a role that does not upload slides, a token without
    ImagingStudy write scope, or a caller without a site.
    """
    allowed = principal.allows("ImagingStudy", "write") and principal.site_id is not None
    if principal.kind == "user" and principal.role not in UPLOAD_ROLES:
        allowed = False
    site = session.get(Site, principal.site_id) if allowed and principal.site_id is not None else None
    if site is None:
        audit.record("create", "Slide", None, outcome="denied", detail="may not upload slides")
        raise Forbidden(N_("Your role or site may not upload slides."), code="SLIDE_UPLOAD_DENIED")
    return site


def record_imaging_study(session: Session, slide: Slide, patient_id: str) -> str:
    """Record the slide as an ImagingStudy of the patient in the FHIR store; return its id.

    Raises ValidationFailed when the store refuses the resource (an unknown patient, …).
    """
    from fhir import services as fhir_store

    stored = fhir_store.create(session, imaging_study(slide, patient_id))
    slide.imaging_study_id = stored.id
    session.flush()
    return stored.id


def slide_summary(slide: Slide) -> dict[str, Any]:
    """Describe a slide for the API: its status and what ingest read from it."""
    return {
        "id": slide.id,
        "status": slide.status,
        "case_id": slide.case_id,
        "filename": slide.original_filename,
        "sha256": slide.sha256,
        "size": slide.size_bytes,
        "format": slide.format,
        "vendor": slide.vendor,
        "width": slide.width,
        "height": slide.height,
        "level_count": slide.level_count,
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "objective_power": slide.objective_power,
        "scanned_at": slide.scanned_at.isoformat() if slide.scanned_at else None,
        "created_at": slide.created_at.isoformat() if slide.created_at else None,
        "imaging_study": f"ImagingStudy/{slide.imaging_study_id}" if slide.imaging_study_id else None,
        "progress": 1.0 if slide.status == "ready" else slide.pyramid_progress,
        "dzi": f"/slides/{slide.id}.dzi",
    }
