"""HTTP entry points of the pathology context: the slide API and the Deep Zoom tiles."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask_babel import gettext as _

from his import audit
from his.api import json_body
from his.db import get_session
from his.errors import N_, Forbidden, ValidationFailed
from his.events import publish
from his.models import Site
from his.openapi import api_doc
from his.policy import ensure_patient_access, grant_site_access
from his.security import current_principal, login_required, scope_required
from pathology.annotations import add_annotation, as_geojson, remove_annotation, slide_annotations
from pathology.cases import (
    RECEIVING_ROLES,
    REQUEST_ROLES,
    CaseRequest,
    case_role,
    case_row,
    case_slides,
    case_summary,
    create_case,
    readable_case,
    requested_cases,
    take_case,
    worklist,
)
from pathology.images import label_image, thumbnail
from pathology.ingest import IngestResult, ingest, too_large
from pathology.models import CASE_STATUSES, ConsultCase, SlideUpload
from pathology.pyramid import DEFAULT_MIN_SIDE
from pathology.reports import ReportInput, get_report, report_summary, save_draft, sign_report, verify_report
from pathology.services import (
    ensure_may_upload,
    ensure_viewable,
    may_see_label,
    queue_pyramid,
    readable_slide,
    record_imaging_study,
    slide_patient_id,
    slide_summary,
    tile_key,
    viewable_slide,
)
from pathology.store import slide_store
from pathology.tiles import tile_server
from pathology.transactions import take_write_lock
from pathology.uploads import (
    DEFAULT_MAX_CHUNK,
    complete_upload,
    get_upload,
    parse_content_range,
    start_upload,
    write_chunk,
)

bp = Blueprint(
    "pathology",
    __name__,
    template_folder="templates",
    static_folder="static/pathology",
    static_url_path="/static/pathology",
)

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
        "progress": {
            "type": "number",
            "nullable": True,
            "description": "share of the pyramid built (0 to 1) while processing",
        },
        "duplicate": {
            "type": "boolean",
            "description": "true when this file was already uploaded by the site",
        },
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


# These move files before they write (copy, hash, inspect): they take the lock themselves, once
# the file work is done.
_LOCK_AFTER_FILE_WORK = frozenset(
    {
        "pathology.upload_slide",
        "pathology.upload_chunk_endpoint",
        "pathology.complete_upload_endpoint",
        "pathology.new_case_page",
    }
)


@bp.before_request
def _lock_for_writes() -> None:
    """Begin a writing request's transaction with SQLite's write lock (see pathology.transactions)."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.endpoint not in _LOCK_AFTER_FILE_WORK:
        take_write_lock(get_session())


def pyramid_min_side() -> int:
    """Return the longest side (px) above which a single-level slide gets a pyramid built."""
    return int(current_app.config.get("PATHOLOGY_PYRAMID_MIN_SIDE", DEFAULT_MIN_SIDE))


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
            "case_id": {
                "type": "string",
                "description": "without a case the slide waits in the site's inbox",
            },
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
    return slide_accepted(result, site, patient_id)


def slide_accepted(result: IngestResult, site: Site, patient_id: str | None) -> tuple[Response, int]:
    """Finish an accepted upload: its ImagingStudy, audit, pyramid or ``slide.ready``; answer 201 (200 for a duplicate)."""
    session = get_session()
    slide = result.slide
    if result.created:
        if patient_id is not None:
            try:
                record_imaging_study(session, slide, patient_id)
            except BaseException:
                slide_store().discard(slide_store().slide_folder(site.code, slide.id))
                raise
        audit.record("create", "Slide", slide.id, patient_id=patient_id)
        queue_pyramid(slide, pyramid_min_side())
        if slide.status == "ready":
            publish("slide.ready", {"slide_id": slide.id, "site": site.code, "case_id": slide.case_id})
    else:
        audit.record("read", "Slide", slide.id, detail="duplicate upload")
    body = slide_summary(slide)
    body["duplicate"] = not result.created
    response = jsonify(body)
    response.headers["Location"] = f"/api/v1/slides/{slide.id}"
    return response, 201 if result.created else 200


UPLOAD_OUTPUT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "offset": {"type": "integer", "description": "bytes received so far: send the next chunk from here"},
        "size": {"type": "integer"},
        "max_chunk": {"type": "integer"},
        "url": {"type": "string"},
    },
}


def max_chunk_bytes() -> int:
    """Return the largest chunk a resumable upload takes at once."""
    return int(current_app.config.get("PATHOLOGY_MAX_CHUNK_BYTES", DEFAULT_MAX_CHUNK))


def _upload_state(upload: SlideUpload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "offset": upload.received,
        "size": upload.size,
        "max_chunk": max_chunk_bytes(),
        "url": f"/api/v1/slides/uploads/{upload.id}",
    }


@bp.post("/api/v1/slides/uploads")
@login_required
@api_doc(
    "Start a resumable upload of a large slide: declare its filename, size and SHA-256, then PUT "
    "its chunks in order to the returned url (Content-Range and X-Chunk-SHA256 headers), and POST "
    "to url/complete. After a dropped connection, GET the url and resume at its offset.",
    tags=["pathology"],
    request={
        "type": "object",
        "required": ["filename", "size", "sha256"],
        "properties": {
            "filename": {"type": "string"},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
            "case_id": {"type": "string"},
        },
    },
    responses={201: UPLOAD_OUTPUT, 401: None, 403: None, 413: None, 422: None},
)
def start_upload_endpoint() -> tuple[Response, int]:
    """Declare a chunked upload."""
    session = get_session()
    site = ensure_may_upload(session, current_principal())
    body = json_body()
    case_id = str(body.get("case_id") or "").strip() or None
    if case_id is not None and not _CASE_ID.match(case_id):
        raise ValidationFailed(fields={"case_id": N_("Use letters, digits, '.', '_' or '-' (at most 64).")})
    size = body.get("size")
    upload = start_upload(
        session,
        slide_store(),
        site_id=site.id,
        user_id=current_principal().user_id,
        filename=str(body.get("filename") or ""),
        size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
        sha256=str(body.get("sha256") or "").lower(),
        case_id=case_id,
        max_bytes=max_slide_bytes(),
    )
    response = jsonify(_upload_state(upload))
    response.headers["Location"] = f"/api/v1/slides/uploads/{upload.id}"
    return response, 201


@bp.get("/api/v1/slides/uploads/<upload_id>")
@login_required
@api_doc(
    "Say how much of a resumable upload arrived (resume at offset)",
    tags=["pathology"],
    responses={200: UPLOAD_OUTPUT, 401: None, 403: None, 404: None},
)
def upload_state_endpoint(upload_id: str) -> Response:
    """Return an upload's offset."""
    return jsonify(_upload_state(get_upload(get_session(), current_principal(), upload_id)))


@bp.put("/api/v1/slides/uploads/<upload_id>")
@login_required
@api_doc(
    "Send one chunk of a resumable upload (Content-Range: bytes start-end/total, X-Chunk-SHA256); "
    "a chunk out of order gets 409 with the offset to resume at",
    tags=["pathology"],
    request={"type": "string", "format": "binary"},
    request_content_type="application/octet-stream",
    responses={200: UPLOAD_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def upload_chunk_endpoint(upload_id: str) -> Response:
    """Write one chunk."""
    where = parse_content_range(request.headers.get("Content-Range"))
    limit = max_chunk_bytes()
    if request.content_length is not None and request.content_length > limit:
        raise ValidationFailed(
            N_("The chunk is too large."), code="UPLOAD_CHUNK_TOO_LARGE", extra={"max_chunk": limit}
        )
    session = get_session()
    upload = get_upload(session, current_principal(), upload_id, lock=True)
    upload = write_chunk(
        session,
        slide_store(),
        upload,
        request.stream,
        where,
        (request.headers.get("X-Chunk-SHA256") or "").lower(),
        max_chunk=limit,
    )
    return jsonify(_upload_state(upload))


@bp.post("/api/v1/slides/uploads/<upload_id>/complete")
@login_required
@api_doc(
    "Finish a resumable upload: the whole file is checked against its SHA-256, then validated and "
    "stored like any slide upload",
    tags=["pathology"],
    responses={201: SLIDE_OUTPUT, 200: SLIDE_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def complete_upload_endpoint(upload_id: str) -> tuple[Response, int]:
    """Ingest a fully received upload."""
    session = get_session()
    site = ensure_may_upload(session, current_principal())
    upload = get_upload(session, current_principal(), upload_id, lock=True)
    result = complete_upload(session, slide_store(), upload, site_code=site.code, max_bytes=max_slide_bytes())
    return slide_accepted(result, site, None)


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
    """Tell whether the request's If-None-Match names this (quoted) ETag, or is ``*``."""
    return request.if_none_match.contains_weak(etag.strip('"'))


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
    ensure_viewable(slide)
    path = slide_store().resolve(slide.stored_path)
    server = tile_server()
    etag = server.etag(tile_key(slide), slide.sha256, path)
    return _cacheable(server.dzi(tile_key(slide), path), "application/xml", etag)


@bp.get("/slides/<slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg")
@login_required
def slide_tile(slide_id: str, level: int, col: int, row: int) -> Response:
    """Return one Deep Zoom tile of a slide, saying in X-Tile-Source whether it was stored, cached or rendered.

    Access is checked on every tile (the view itself is audited when the descriptor is
    opened); the slide's details come from a cache of a few seconds, so a stored or
    cached tile is sent without a query of its own or a decode.
    """
    view = viewable_slide(get_session(), current_principal(), slide_id)
    server = tile_server()
    if request.if_none_match:
        etag = server.tile_etag(view.tile_key, view.sha256, view.path, level, col, row)
        if _not_modified(etag):
            return _cacheable(b"", "image/jpeg", etag)
    tile = server.tile(view.tile_key, view.sha256, view.path, level, col, row)
    response = _cacheable(tile.data, "image/jpeg", tile.etag)
    response.headers["X-Tile-Source"] = tile.source
    return response


CASE_OUTPUT = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["new", "in_progress", "reported"]},
        "patient_id": {"type": "string"},
        "clinical_question": {"type": "string"},
        "specimen_type": {"type": "string"},
        "body_site": {"type": "string", "nullable": True},
        "requesting_site": {"type": "string"},
        "receiving_site": {"type": "string"},
        "assigned_to": {
            "type": "string",
            "nullable": True,
            "description": "the pathologist who took the case",
        },
        "slide_count": {"type": "integer"},
        "waiting_seconds": {"type": "integer", "description": "since the request, until it was reported"},
        "created_at": {"type": "string", "format": "date-time"},
        "taken_at": {"type": "string", "format": "date-time", "nullable": True},
        "reported_at": {"type": "string", "format": "date-time", "nullable": True},
        "service_request": {"type": "string", "example": "ServiceRequest/123"},
        "specimen": {"type": "string", "example": "Specimen/123"},
        "slides": {"type": "array", "items": SLIDE_OUTPUT},
    },
}


def _case_detail(case: ConsultCase) -> dict[str, Any]:
    session = get_session()
    body = case_summary(case_row(session, case))
    body["slides"] = [slide_summary(slide) for slide in case_slides(session, case)]
    return body


@bp.post("/api/v1/cases")
@login_required
@scope_required("ServiceRequest", "write")
@api_doc(
    "Ask a central hospital for a pathology consult: a ServiceRequest with the clinical question, a "
    "Specimen, and slides of your site's inbox. The receiving site's pathologists then see the case, "
    "its slides and its patient.",
    tags=["pathology"],
    request={
        "type": "object",
        "required": ["patient_id", "receiving_site", "clinical_question", "specimen_type", "slide_ids"],
        "properties": {
            "patient_id": {"type": "string"},
            "receiving_site": {
                "type": "string",
                "description": "code of the central site",
                "example": "CENT",
            },
            "clinical_question": {"type": "string"},
            "specimen_type": {"type": "string", "example": "Colon biopsy"},
            "body_site": {"type": "string"},
            "slide_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    responses={201: CASE_OUTPUT, 401: None, 403: None, 409: None, 422: None},
)
def create_case_endpoint() -> tuple[Response, int]:
    """Open a consult case from the JSON body."""
    body = json_body()
    slide_ids = body.get("slide_ids") or []
    if not isinstance(slide_ids, list) or not all(isinstance(item, str) for item in slide_ids):
        raise ValidationFailed(fields={"slide_ids": N_("Give a list of slide ids.")})
    wanted = CaseRequest(
        patient_id=str(body.get("patient_id") or ""),
        receiving_site=str(body.get("receiving_site") or ""),
        clinical_question=str(body.get("clinical_question") or ""),
        specimen_type=str(body.get("specimen_type") or ""),
        body_site=str(body.get("body_site") or "") or None,
        slide_ids=tuple(slide_ids),
    )
    case = open_case(wanted)
    response = jsonify(_case_detail(case))
    response.headers["Location"] = f"/api/v1/cases/{case.id}"
    return response, 201


def open_case(wanted: CaseRequest) -> ConsultCase:
    """Create a case, share its patient with the receiving site, audit it and tell the worklists."""
    principal = current_principal()
    if wanted.patient_id.strip():
        ensure_patient_access(principal, wanted.patient_id.strip(), "write")
    session = get_session()
    take_write_lock(session)
    case = create_case(session, principal, wanted)
    grant_site_access(case.patient_id, case.receiving_site_id, reason="consult")
    audit.record("create", "PathologyCase", case.id, patient_id=case.patient_id)
    publish("pathology.case.created", {"case_id": case.id, "receiving_site_id": case.receiving_site_id})
    return case


@bp.get("/api/v1/cases")
@login_required
@scope_required("ServiceRequest", "read")
@api_doc(
    "List consult cases: for a central pathologist the worklist of cases sent to the site (oldest "
    "waiting first), for others the cases their site sent (newest first).",
    tags=["pathology"],
    parameters=[
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": ["new", "in_progress", "reported"]},
        }
    ],
    responses={
        200: {"type": "object", "properties": {"cases": {"type": "array", "items": CASE_OUTPUT}}},
        401: None,
    },
)
def list_cases_endpoint() -> Response:
    """Return the caller's worklist or their site's requested cases."""
    principal = current_principal()
    status = request.args.get("status") or None
    if status is not None and status not in CASE_STATUSES:
        raise ValidationFailed(fields={"status": N_("Use new, in_progress or reported.")})
    session = get_session()
    if principal.site_id is None or principal.role not in REQUEST_ROLES | RECEIVING_ROLES:
        rows = []
    elif principal.role in RECEIVING_ROLES and _is_central(principal.site_id):
        rows = worklist(session, principal.site_id, status)
    else:
        rows = [
            row for row in requested_cases(session, principal.site_id) if status in (None, row.case.status)
        ]
    audit.record("search", "PathologyCase", None, detail=f"{len(rows)} cases")
    return jsonify({"cases": [case_summary(row) for row in rows]})


def _is_central(site_id: int) -> bool:
    site = get_session().get(Site, site_id)
    return site is not None and site.kind == "central"


@bp.get("/api/v1/cases/<case_id>")
@login_required
@scope_required("ServiceRequest", "read")
@api_doc(
    "Read a consult case with its slides (the requesting site's staff and the receiving site's pathologists)",
    tags=["pathology"],
    responses={200: CASE_OUTPUT, 401: None, 403: None, 404: None},
)
def read_case_endpoint(case_id: str) -> Response:
    """Return one case."""
    case = readable_case(get_session(), current_principal(), case_id)
    audit.record("read", "PathologyCase", case.id, patient_id=case.patient_id)
    return jsonify(_case_detail(case))


@bp.post("/api/v1/cases/<case_id>/take")
@login_required
@scope_required("ServiceRequest", "write")
@api_doc(
    "Take a new case (a pathologist of the receiving site); it moves to in_progress",
    tags=["pathology"],
    responses={200: CASE_OUTPUT, 401: None, 403: None, 404: None, 409: None},
)
def take_case_endpoint(case_id: str) -> Response:
    """Assign the case to the calling pathologist."""
    session = get_session()
    case = take_case(session, current_principal(), readable_case(session, current_principal(), case_id))
    audit.record("update", "PathologyCase", case.id, patient_id=case.patient_id, detail="taken")
    publish("pathology.case.taken", {"case_id": case.id, "receiving_site_id": case.receiving_site_id})
    return jsonify(_case_detail(case))


@bp.get("/slides/<slide_id>/thumbnail.jpeg")
@login_required
def slide_thumbnail(slide_id: str) -> Response:
    """Return a small picture of the whole slide for case lists."""
    slide = readable_slide(get_session(), current_principal(), slide_id, audit_read=False)
    path = slide_store().resolve(slide.stored_path)
    server = tile_server()
    key = tile_key(slide)
    return _cacheable(thumbnail(server, key, path), "image/jpeg", server.etag(key, slide.sha256, path, -1))


@bp.get("/slides/<slide_id>/label.jpeg")
@login_required
def slide_label(slide_id: str) -> Response:
    """Return the slide's label image, which can carry patient identifiers, to authorised users only."""
    session = get_session()
    principal = current_principal()
    slide = readable_slide(session, principal, slide_id, audit_read=False)
    if not may_see_label(session, principal, slide):
        audit.record("read", "SlideLabel", slide.id, outcome="denied")
        raise Forbidden(N_("You may not see this slide's label."), code="SLIDE_LABEL_DENIED")
    path = slide_store().resolve(slide.stored_path)
    data = label_image(tile_server(), tile_key(slide), path)
    audit.record("read", "SlideLabel", slide.id, patient_id=slide_patient_id(session, slide))
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, no-store"
    return response


ANNOTATION_INPUT = {
    "type": "object",
    "description": "a GeoJSON Feature; coordinates in micrometres from the slide's top-left corner",
    "required": ["type", "geometry", "properties"],
    "properties": {
        "type": {"type": "string", "enum": ["Feature"]},
        "geometry": {
            "type": "object",
            "example": {"type": "LineString", "coordinates": [[100, 200], [350, 200]]},
        },
        "properties": {
            "type": "object",
            "properties": {
                "kind": {
                    "type": "string",
                    "enum": ["point", "text", "line", "measurement", "rectangle", "polygon"],
                },
                "label": {"type": "string"},
            },
        },
    },
}


@bp.get("/api/v1/slides/<slide_id>/annotations")
@login_required
@api_doc(
    "List a slide's annotations as a GeoJSON FeatureCollection in slide micrometres",
    tags=["pathology"],
    responses={200: {"type": "object"}, 401: None, 403: None, 404: None},
)
def list_annotations(slide_id: str) -> Response:
    """Return every annotation on a slide."""
    session = get_session()
    slide = readable_slide(session, current_principal(), slide_id, audit_read=False)
    audit.record("read", "Annotation", slide.id, patient_id=slide_patient_id(session, slide))
    return jsonify(slide_annotations(session, slide))


@bp.post("/api/v1/slides/<slide_id>/annotations")
@login_required
@api_doc(
    "Add an annotation (point, text, line, measurement, rectangle, polygon) to a slide; lengths "
    "(µm) and areas (mm²) are computed by the server",
    tags=["pathology"],
    request=ANNOTATION_INPUT,
    responses={201: {"type": "object"}, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def create_annotation(slide_id: str) -> tuple[Response, int]:
    """Store one annotation."""
    session = get_session()
    principal = current_principal()
    slide = readable_slide(session, principal, slide_id, audit_read=False)
    annotation = add_annotation(session, principal, slide, json_body())
    audit.record("create", "Annotation", str(annotation.id), patient_id=slide_patient_id(session, slide))
    publish("pathology.annotation.added", {"slide_id": slide.id, "annotation_id": annotation.id})
    response = jsonify(as_geojson(annotation))
    response.headers["Location"] = f"/api/v1/slides/{slide.id}/annotations/{annotation.id}"
    return response, 201


@bp.delete("/api/v1/slides/<slide_id>/annotations/<int:annotation_id>")
@login_required
@api_doc(
    "Delete one of your annotations (not once the case is reported)",
    tags=["pathology"],
    responses={204: None, 401: None, 403: None, 404: None, 409: None},
)
def delete_annotation(slide_id: str, annotation_id: int) -> tuple[str, int]:
    """Remove one annotation."""
    session = get_session()
    principal = current_principal()
    slide = readable_slide(session, principal, slide_id, audit_read=False)
    remove_annotation(session, principal, slide, annotation_id)
    audit.record("delete", "Annotation", str(annotation_id), patient_id=slide_patient_id(session, slide))
    return "", 204


REPORT_INPUT = {
    "type": "object",
    "properties": {
        "macroscopic": {"type": "string"},
        "microscopic": {"type": "string"},
        "conclusion": {"type": "string"},
        "diagnosis_code": {"type": "string", "description": "ICD-10", "example": "C18.7"},
        "diagnosis_display": {"type": "string"},
    },
}
REPORT_OUTPUT = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["none", "draft", "signed"]},
        "macroscopic": {"type": "string"},
        "microscopic": {"type": "string"},
        "conclusion": {"type": "string"},
        "diagnosis": {"type": "object", "nullable": True},
        "signed_at": {"type": "string", "format": "date-time", "nullable": True},
        "diagnostic_report": {"type": "string", "nullable": True},
        "provenance": {"type": "string", "nullable": True},
        "signature": {"type": "object", "description": "whether the signature still holds, and who signed"},
    },
}


def report_input(values: Any) -> ReportInput:
    """Read the report's fields from a JSON body or a form."""
    return ReportInput(
        **{name: str(values.get(name) or "") for name in ReportInput.__dataclass_fields__},
    )


def visible_report(case: ConsultCase) -> dict[str, Any]:
    """Return the case's report as the caller may see it (a draft only to its pathologists), auditing the view."""
    session = get_session()
    principal = current_principal()
    report = get_report(session, case)
    if report is None or (report.status != "signed" and case_role(principal, case) != "receiver"):
        return {"status": "none"}
    verification = verify_report(session, report) if report.status == "signed" else None
    body = report_summary(report, verification)
    if verification is not None:
        body["signature"]["message"] = _(verification.reason)
    audit.record(
        "read",
        "DiagnosticReport",
        report.diagnostic_report_id or f"draft:{case.id}",
        patient_id=case.patient_id,
    )
    return body


@bp.get("/api/v1/cases/<case_id>/report")
@login_required
@scope_required("DiagnosticReport", "read")
@api_doc(
    "Read a case's report: the signed one, with whether its signature still holds; a draft only "
    "to the receiving site's pathologists",
    tags=["pathology"],
    responses={200: REPORT_OUTPUT, 401: None, 403: None, 404: None},
)
def read_report_endpoint(case_id: str) -> Response:
    """Return the report of a case."""
    case = readable_case(get_session(), current_principal(), case_id)
    return jsonify(visible_report(case))


@bp.put("/api/v1/cases/<case_id>/report")
@login_required
@scope_required("DiagnosticReport", "write")
@api_doc(
    "Save the report's draft (the pathologist who took the case); a signed report cannot change (409)",
    tags=["pathology"],
    request=REPORT_INPUT,
    responses={200: REPORT_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def save_report_endpoint(case_id: str) -> Response:
    """Save a draft report."""
    session = get_session()
    principal = current_principal()
    case = readable_case(session, principal, case_id)
    report = save_draft(session, principal, case, report_input(json_body()))
    audit.record("update", "DiagnosticReport", f"draft:{case.id}", patient_id=case.patient_id)
    return jsonify(report_summary(report))


@bp.post("/api/v1/cases/<case_id>/report/sign")
@login_required
@scope_required("DiagnosticReport", "write")
@api_doc(
    "Sign the saved draft with the pathologist's key: the DiagnosticReport and its Provenance are "
    "written, the case is reported and the requesting doctor is notified (event report.signed)",
    tags=["pathology"],
    responses={200: REPORT_OUTPUT, 401: None, 403: None, 404: None, 409: None, 422: None},
)
def sign_report_endpoint(case_id: str) -> Response:
    """Sign the report of a case."""
    case = readable_case(get_session(), current_principal(), case_id)
    sign_case_report(case)
    return jsonify(visible_report(case))


def sign_case_report(case: ConsultCase) -> None:
    """Sign the case's report, audit it and notify the requesting site."""
    session = get_session()
    secret = str(current_app.config["SECRET_KEY"])
    report = sign_report(session, current_principal(), case, secret)
    audit.record("sign", "DiagnosticReport", report.diagnostic_report_id, patient_id=case.patient_id)
    publish(
        "report.signed",
        {
            "case_id": case.id,
            "diagnostic_report": f"DiagnosticReport/{report.diagnostic_report_id}",
            "requesting_site_id": case.requesting_site_id,
            "requested_by": case.requested_by,
        },
    )


from pathology import demo, jobs, pages  # noqa: E402, F401  (registers the pages, the jobs and the demo loader)
