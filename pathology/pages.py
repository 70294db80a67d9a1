"""Pages of the pathology context: the worklist, the consult cases, the case page with its report, the viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response as BaseResponse

from his import audit
from his.db import get_session
from his.errors import ValidationFailed, VetinhError
from his.events import sse_response
from his.models import Site, User
from his.navigation import add_nav_item
from his.security import current_principal, roles_required
from pathology.annotations import annotations_frozen, slide_extent_um
from pathology.cases import (
    REQUEST_ROLES,
    CaseRequest,
    case_role,
    case_row,
    case_slides,
    central_sites,
    inbox_slides,
    readable_case,
    requested_cases,
    take_case,
    worklist,
)
from pathology.images import has_label
from pathology.ingest import ingest
from pathology.models import CASE_STATUSES, ConsultCase
from pathology.patients import PatientMatch, find_patients
from pathology.reports import get_report, save_draft, verify_report
from pathology.services import (
    ensure_may_upload,
    may_see_label,
    queue_pyramid,
    readable_slide,
    slide_patient_id,
    tile_key,
)
from pathology.store import slide_store
from pathology.tiles import tile_server
from pathology.views import bp, max_slide_bytes, open_case, pyramid_min_side, report_input, sign_case_report

add_nav_item(
    "pathology.worklist_page", _l("Pathology worklist"), {"pathologist"}, icon="microscope", order=40
)
add_nav_item(
    "pathology.cases_page", _l("Pathology consults"), {"doctor", "nurse"}, icon="microscope", order=41
)

STATUS_LABELS = {"new": _l("New"), "in_progress": _l("In progress"), "reported": _l("Reported")}


@bp.app_template_filter("waited")
def format_waited(seconds: int) -> str:
    """Show a waiting time as ``3 d 4 h``, ``2 h 05 min`` or ``7 min``."""
    minutes = seconds // 60
    days, hours, minutes = minutes // 1440, (minutes // 60) % 24, minutes % 60
    if days:
        return _("%(days)d d %(hours)d h", days=days, hours=hours)
    if hours:
        return _("%(hours)d h %(minutes)02d min", hours=hours, minutes=minutes)
    return _("%(minutes)d min", minutes=minutes)


@bp.get("/pathology/worklist")
@roles_required("pathologist")
def worklist_page() -> str:
    """Show the cases sent to the pathologist's site, by state, oldest waiting first."""
    principal = current_principal()
    status = request.args.get("status", "new")
    if status not in CASE_STATUSES:
        status = "new"
    session = get_session()
    rows = worklist(session, principal.site_id, None) if principal.site_id else []
    counts = {name: sum(1 for row in rows if row.case.status == name) for name in CASE_STATUSES}
    audit.record("search", "PathologyCase", None, detail="worklist")
    return render_template(
        "pathology/worklist.html",
        rows=[row for row in rows if row.case.status == status],
        status=status,
        counts=counts,
        status_labels=STATUS_LABELS,
    )


@bp.get("/pathology/cases")
@roles_required(*REQUEST_ROLES)
def cases_page() -> str:
    """Show the consult cases the user's site sent, newest first."""
    principal = current_principal()
    rows = requested_cases(get_session(), principal.site_id) if principal.site_id else []
    audit.record("search", "PathologyCase", None, detail="requested cases")
    return render_template("pathology/cases.html", rows=rows, status_labels=STATUS_LABELS)


@bp.route("/pathology/cases/new", methods=["GET", "POST"])
@roles_required(*REQUEST_ROLES)
def new_case_page() -> str | BaseResponse | tuple[str, int]:
    """Ask the central hospital for a consult: patient, question, specimen, slides (chosen or uploaded)."""
    session = get_session()
    principal = current_principal()
    form: dict[str, Any] = {}
    errors: dict[str, str] = {}
    query = (request.args.get("q") or "").strip()
    matches: list[PatientMatch] = []
    if query:
        try:
            matches = find_patients(session, principal, query)
        except ValidationFailed as error:
            errors = {name: _(message) for name, message in error.fields.items()}
    if request.method == "POST":
        form = request.form.to_dict()
        # A patient picked from the search results wins over an id typed by hand.
        if form.get("patient_choice"):
            form["patient_id"] = form["patient_choice"]
        slide_ids = request.form.getlist("slide_ids")
        uploaded: list[Path] = []
        try:
            files = [f for f in request.files.getlist("files") if f and f.filename]
            if files:
                site = ensure_may_upload(session, principal)
                for upload in files:
                    result = ingest(
                        session,
                        slide_store(),
                        upload.stream,
                        filename=upload.filename or "slide",
                        site_id=site.id,
                        site_code=site.code,
                        case_id=None,
                        uploaded_by=principal.user_id,
                        max_bytes=max_slide_bytes(),
                    )
                    if result.created:
                        uploaded.append(slide_store().slide_folder(site.code, result.slide.id))
                        audit.record("create", "Slide", result.slide.id)
                        queue_pyramid(result.slide, pyramid_min_side())
                    slide_ids.append(result.slide.id)
            case = open_case(
                CaseRequest(
                    patient_id=form.get("patient_id", ""),
                    receiving_site=form.get("receiving_site", ""),
                    clinical_question=form.get("clinical_question", ""),
                    specimen_type=form.get("specimen_type", ""),
                    body_site=form.get("body_site") or None,
                    slide_ids=tuple(slide_ids),
                )
            )
        except BaseException as error:
            # The rows of slides accepted earlier in this request roll back: so must their files.
            for folder in uploaded:
                slide_store().discard(folder)
            if not isinstance(error, ValidationFailed):
                raise
            session.rollback()
            errors = {name: _(message) for name, message in error.fields.items()} or {"": _(error.message)}
        else:
            flash(_("The consult was sent to the central hospital."), "success")
            return redirect(url_for("pathology.case_page", case_id=case.id))
    sites = central_sites(session)
    slides = inbox_slides(session, principal.site_id) if principal.site_id else []
    page = render_template(
        "pathology/new_case.html",
        form=form,
        errors=errors,
        sites=sites,
        slides=slides,
        chosen=form,
        query=query,
        matches=matches,
    )
    return (page, 422) if errors else page


@bp.get("/pathology/cases/<case_id>")
@roles_required(*REQUEST_ROLES)
def case_page(case_id: str) -> str:
    """Show a case: question, specimen, slides, and its report (to write, or as signed)."""
    session = get_session()
    principal = current_principal()
    case = readable_case(session, principal, case_id)
    audit.record("read", "PathologyCase", case.id, patient_id=case.patient_id)
    report = get_report(session, case)
    role = case_role(principal, case)
    verification = None
    if report is not None and report.status == "signed":
        verification = verify_report(session, report)
        audit.record("read", "DiagnosticReport", report.diagnostic_report_id, patient_id=case.patient_id)
    elif report is not None and role != "receiver":
        report = None
    return render_template(
        "pathology/case.html",
        case=case,
        row=case_row(session, case),
        slides=case_slides(session, case),
        report=report,
        verification=verification,
        author=session.get(User, report.author_id) if report is not None and report.author_id else None,
        role=role,
        may_write=role == "receiver"
        and case.status == "in_progress"
        and case.assigned_to == principal.user_id,
        status_labels=STATUS_LABELS,
    )


@bp.post("/pathology/cases/<case_id>/take")
@roles_required("pathologist")
def take_case_page(case_id: str) -> BaseResponse:
    """Take a case from the worklist and go to it."""
    session = get_session()
    case = take_case(session, current_principal(), readable_case(session, current_principal(), case_id))
    audit.record("update", "PathologyCase", case.id, patient_id=case.patient_id, detail="taken")
    return redirect(url_for("pathology.case_page", case_id=case.id))


@bp.post("/pathology/cases/<case_id>/report")
@roles_required("pathologist")
def report_page(case_id: str) -> str | BaseResponse | tuple[str, int]:
    """Save the report's draft, or save and sign it."""
    session = get_session()
    principal = current_principal()
    case = readable_case(session, principal, case_id)
    try:
        save_draft(session, principal, case, report_input(request.form))
        audit.record("update", "DiagnosticReport", f"draft:{case.id}", patient_id=case.patient_id)
        if request.form.get("action") == "sign":
            # No flash message: the page shows the signed report, and reading a flash back
            # rewrites the web session just as the requesting doctor's page reloads on
            # report.signed (SQLite then refuses one of the two writers).
            sign_case_report(case)
        else:
            flash(_("The draft is saved."), "success")
    except ValidationFailed as error:
        session.rollback()
        messages = "; ".join(_(message) for message in error.fields.values()) or _(error.message)
        flash(_(error.message) + " " + messages, "error")
        case = readable_case(session, principal, case_id)
    return redirect(url_for("pathology.case_page", case_id=case.id))


def _case_of(slide_case_id: str | None) -> ConsultCase | None:
    return get_session().get(ConsultCase, slide_case_id) if slide_case_id else None


@bp.get("/pathology/slides/<slide_id>")
@roles_required("doctor", "nurse", "pathologist")
def viewer_page(slide_id: str) -> str:
    """Show a slide in the viewer with its metadata and annotations."""
    session = get_session()
    principal = current_principal()
    slide = readable_slide(session, principal, slide_id, audit_read=False)
    audit.record("read", "Slide", slide.id, patient_id=slide_patient_id(session, slide), detail="viewer")
    width_um, height_um, calibrated = slide_extent_um(slide)
    case = _case_of(slide.case_id)
    show_label = False
    if may_see_label(session, principal, slide):
        try:
            show_label = has_label(tile_server(), tile_key(slide), slide_store().resolve(slide.stored_path))
        except VetinhError:
            show_label = False
    frozen = annotations_frozen(session, slide)
    config = {
        "slideId": slide.id,
        "dzi": url_for("pathology.slide_dzi", slide_id=slide.id),
        "annotations": url_for("pathology.list_annotations", slide_id=slide.id),
        "osdImages": url_for("his.vendor", filename="openseadragon/build/openseadragon/images/"),
        "mppX": slide.mpp_x or 1.0,
        "mppY": slide.mpp_y or 1.0,
        "calibrated": calibrated,
        "width": slide.width,
        "height": slide.height,
        "userId": principal.user_id,
        "readOnly": frozen,
        "text": {
            "point": _("Point"),
            "text": _("Text"),
            "line": _("Line"),
            "measurement": _("Measurement"),
            "rectangle": _("Rectangle"),
            "polygon": _("Polygon"),
            "saved": _("Saved."),
            "saveFailed": _("The annotation was not saved:"),
            "drawFirst": _("Draw a shape first."),
            "textNeeded": _("Write the text of the label."),
            "polygonHint": _("Click to add corners; double-click to close the polygon."),
            "delete": _("Delete"),
            "by": _("by"),
            "area": _("area"),
            "length": _("length"),
            "uncalibrated": _("(pixels: this slide has no pixel size)"),
        },
    }
    return render_template(
        "pathology/viewer.html",
        slide=slide,
        case=case,
        config=config,
        show_label=show_label,
        frozen=frozen,
        width_um=width_um,
        height_um=height_um,
        calibrated=calibrated,
        site=session.get(Site, slide.site_id),
    )


LIVE_TOPICS = ["report.signed", "pathology.case.created", "pathology.case.taken", "slide.ready"]


@bp.get("/pathology/events")
@roles_required("doctor", "nurse", "pathologist")
def live_events() -> Response:
    """Stream the consult events that make a case list or a case page worth reloading (ids only)."""
    return sse_response(LIVE_TOPICS)
