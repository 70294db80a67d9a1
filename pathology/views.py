"""HTTP entry points of the pathology context: the slide API and the Deep Zoom tiles."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, jsonify, request

from his import audit
from his.db import get_session
from his.errors import N_, ValidationFailed
from his.events import publish
from his.openapi import api_doc
from his.policy import ensure_patient_access
from his.security import current_principal, login_required
from pathology.ingest import ingest, too_large
from pathology.services import ensure_may_upload, readable_slide, record_imaging_study, slide_summary
from pathology.store import slide_store
from pathology.tiles import tile_server

bp = Blueprint("pathology", __name__, template_folder="templates", static_folder="static", static_url_path="/static/pathology")

DEFAULT_MAX_SLIDE_BYTES = 4 * 1024 * 1024 * 1024
MULTIPART_OVERHEAD = 1024 * 1024
IMMUTABLE = "private, max-age=31536000, immutable"
_CASE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SLIDE_OUTPUT = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["processing", "ready", "failed"]},
        "duplicate": {"type": "boolean", "description": "true when this file was already uploaded by the site"},
        "case_id": {"type": "string", "nullable": True},
        "filename": {"type": "string"},
        "sha256": {"type": "string"},
        "size": {"type": "integer"},
        "format": {"type": "string", "example": "aperio"},
        "vendor": {"type": "string", "nullable": True},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "level_count": {"type": "integer"},
        "mpp_x": {"type": "number", "nullable": True},
        "mpp_y": {"type": "number", "nullable": True},
        "objective_power": {"type": "number", "nullable": True},
        "scanned_at": {"type": "string", "format": "date-time", "nullable": True},
        "created_at": {"type": "string", "format": "date-time"},
        "imaging_study": {"type": "string", "nullable": True, "example": "ImagingStudy/123"},
        "dzi": {"type": "string", "description": "URL of the Deep Zoom descriptor"},
    },
}


def max_slide_bytes() -> int:
    """Return the configured slide size limit."""
    return int(current_app.config.get("PATHOLOGY_MAX_SLIDE_BYTES", DEFAULT_MAX_SLIDE_BYTES))


@bp.post("/api/v1/slides")
@login_required
@api_doc(
    "Upload a whole-slide image (SVS, NDPI, MRXS in a zip, SCN, Philips or tiled TIFF, DICOM WSI, "
    "or a DICOM WSI series in a zip). It is validated before it is accepted; a refused file gets "
    "422 with a code saying why. The same file uploaded again by the same site returns the "
    "existing slide with 200 and duplicate=true.",
    tags=["pathology"],
    request={
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "case_id": {"type": "string", "description": "without a case the slide waits in the site's inbox"},
            "patient_id": {
                "type": "string",
                "description": "the patient's FHIR id; the slide is then recorded as an ImagingStudy (modality SM)",
            },
        },
    },
    request_content_type="multipart/form-data",
    responses={201: SLIDE_OUTPUT, 200: SLIDE_OUTPUT, 401: None, 403: None, 413: None, 422: None},
)
def upload_slide() -> tuple[Response, int]:
    """Accept a slide for the caller's site, or return the one already stored for the same file."""
    session = get_session()
    site = ensure_may_upload(session, current_principal())
    limit = max_slide_bytes()
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)
    request.max_content_length = limit + MULTIPART_OVERHEAD
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ValidationFailed(
            N_("Attach the slide in the form field 'file'."),
            code="SLIDE_FILE_MISSING",
            fields={"file": N_("required")},
        )
    case_id = (request.form.get("case_id") or "").strip() or None
    if case_id is not None and not _CASE_ID.match(case_id):
        raise ValidationFailed(fields={"case_id": N_("Use letters, digits, '.', '_' or '-' (at most 64).")})
    patient_id = (request.form.get("patient_id") or "").strip() or None
    if patient_id is not None:
        if not _CASE_ID.match(patient_id):
            raise ValidationFailed(fields={"patient_id": N_("This is not a patient id.")})
        ensure_patient_access(current_principal(), patient_id, "write")
    result = ingest(
        session,
        slide_store(),
        upload.stream,
        filename=upload.filename,
        site_id=site.id,
        site_code=site.code,
        case_id=case_id,
        uploaded_by=current_principal().user_id,
        max_bytes=limit,
    )
    slide = result.slide
    if result.created:
        if patient_id is not None:
            try:
                record_imaging_study(session, slide, patient_id)
            except BaseException:
                slide_store().discard(slide_store().slide_folder(site.code, slide.id))
                raise
        audit.record("create", "Slide", slide.id, patient_id=patient_id)
        if slide.status == "ready":
            publish("slide.ready", {"slide_id": slide.id, "site": site.code, "case_id": slide.case_id})
    else:
        audit.record("read", "Slide", slide.id, detail="duplicate upload")
    body = slide_summary(slide)
    body["duplicate"] = not result.created
    response = jsonify(body)
    response.headers["Location"] = f"/api/v1/slides/{slide.id}"
    return response, 201 if result.created else 200


@bp.get("/api/v1/slides/<slide_id>")
@login_required
@api_doc(
    "Read a slide's status and metadata (staff of the uploading site)",
    tags=["pathology"],
    responses={200: SLIDE_OUTPUT, 401: None, 403: None, 404: None},
)
def read_slide(slide_id: str) -> Response:
    """Return a slide's status and metadata."""
    slide = readable_slide(get_session(), current_principal(), slide_id)
    return jsonify(slide_summary(slide))


def _not_modified(etag: str) -> bool:
    return etag in request.headers.get("If-None-Match", "")


def _cacheable(body: bytes | str, mimetype: str, etag: str) -> Response:
    response = Response(status=304) if _not_modified(etag) else Response(body, mimetype=mimetype)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = IMMUTABLE
    return response


@bp.get("/slides/<slide_id>.dzi")
@login_required
def slide_dzi(slide_id: str) -> Response:
    """Return the Deep Zoom descriptor of a slide; opening it counts as viewing the slide."""
    slide = readable_slide(get_session(), current_principal(), slide_id)
    path = slide_store().resolve(slide.stored_path)
    server = tile_server()
    etag = server.etag(slide.id, slide.sha256, path)
    return _cacheable(server.dzi(slide.id, path), "application/xml", etag)


@bp.get("/slides/<slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg")
@login_required
def slide_tile(slide_id: str, level: int, col: int, row: int) -> Response:
    """Return one Deep Zoom tile of a slide."""
    slide = readable_slide(get_session(), current_principal(), slide_id, audit_read=False)
    path = slide_store().resolve(slide.stored_path)
    tile = tile_server().tile(slide.id, slide.sha256, path, level, col, row)
    response = _cacheable(tile.data, "image/jpeg", tile.etag)
    response.headers["X-Tile-Source"] = "native" if tile.native else "rendered"
    return response
