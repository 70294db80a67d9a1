"""HTTP entry points of medical records, e-prescriptions and the pharmacy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from flask.cli import with_appcontext
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from fhir import services as fhir_store
from his import audit
from his.db import begin_immediate, get_database, get_session
from his.errors import Conflict, Forbidden, NotFound, ValidationFailed, VetinhError
from his.events import publish
from his.i18n import format_day, local_zone
from his.models import Site, User
from his.navigation import add_nav_item
from his.openapi import api_doc
from his.policy import ensure_patient_access
from his.records import demo as _demo  # noqa: F401 - registers the demo loader
from his.records import jobs as _jobs  # noqa: F401 - registers the outbox job
from his.records import pharmacy, services, signatures
from his.records.catalogue import icd10, orderable_services, search_icd10
from his.records.models import OutboxMessage, Prescription, Signature
from his.records.national import errors_of
from his.records.services import Actor, DraftLine, DraftPrescription, Vitals
from his.security import current_principal, login_required, roles_required

# cli_group=None puts `verify` at the top of the `vetinh` command, next to `run` and `db`.
bp = Blueprint(
    "records",
    __name__,
    template_folder="templates",
    static_folder="static/records",
    static_url_path="/static/records",
    cli_group=None,
)
fhir_store.register_write_guard(signatures.refuse_signed_changes)

CLINICIANS = ("doctor", "nurse")
add_nav_item("records.worklist", _l("Worklist"), {"doctor", "nurse"}, icon="list", order=20)
add_nav_item("records.pharmacy_home", _l("Pharmacy"), {"pharmacist"}, icon="pill", order=20)
add_nav_item("records.my_records", _l("My records"), {"patient"}, icon="file", order=30)
add_nav_item("records.antibiotic_report", _l("Antibiotic use"), {"manager"}, icon="chart", order=60)


@bp.before_request
def _take_sqlite_write_lock() -> None:
    """On SQLite, start a writing request with the write lock held.

    A transaction that read first and writes later fails with "database is locked" when
    another writer got in between (two pharmacists dispensing one prescription); holding
    the lock from the start makes them wait their turn. PostgreSQL needs nothing: the
    dispensing UPDATE re-checks its condition on the locked row. Opening an encounter is a
    GET that writes too (it puts the encounter in progress), so it takes the lock as well.
    """
    if request.method != "POST" and request.endpoint != "records.encounter":
        return
    session = get_session()
    if session.get_bind().dialect.name != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return
        session.commit()
    begin_immediate(session)


def _note_labels() -> dict[str, str]:
    return {
        "chief_complaint": _("Chief complaint"),
        "history": _("History"),
        "examination": _("Examination"),
        "plan": _("Plan"),
    }


def _vital_labels() -> dict[str, tuple[str, str]]:
    """Name each vital sign's LOINC code in the reader's language, with the unit as written on paper."""
    return {
        "85354-9": (_("Blood pressure"), "mmHg"),
        "8867-4": (_("Pulse"), _("/min")),
        "8310-5": (_("Temperature"), "°C"),
        "9279-1": (_("Respiratory rate"), _("/min")),
        "59408-5": (_("SpO2"), "%"),
        "29463-7": (_("Weight"), "kg"),
        "8302-2": (_("Height"), "cm"),
        "39156-5": (_("BMI"), "kg/m²"),
    }


@bp.app_template_filter("record_date")
def record_date(value: str | None) -> str:
    """Show a FHIR date or dateTime as 23/11/2026 (a moment in the hospital's time zone)."""
    text = (value or "").strip()
    if not text:
        return "—"
    try:
        if len(text) == 10:
            return format_day(date.fromisoformat(text))
        return format_day(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return text


@bp.app_template_filter("record_number")
def record_number(value: Decimal | float | int | str | None, *, keep_zeros: bool = False) -> str:
    """Show a number with a decimal comma in Vietnamese, without trailing zeros unless told to keep them."""
    if value is None or value == "":
        return "—"
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    text = f"{number:f}"
    if "." in text and not keep_zeros:
        text = text.rstrip("0").rstrip(".")
    return text.replace(".", ",") if _locale() == "vi" else text


@bp.app_template_filter("diagnosis_title")
def diagnosis_title(code: str, recorded: str = "") -> str:
    """Title an ICD-10 code in the reader's language (the record keeps the Vietnamese title)."""
    entry = icd10(code or "")
    if entry is None:
        return recorded
    return entry.en if _locale() == "en" else (recorded or entry.vi)


@bp.app_template_filter("diagnosis_line")
def diagnosis_line(line: str) -> str:
    """Retitle a "CODE title" line of a past visit in the reader's language."""
    code, _sep, recorded = (line or "").partition(" ")
    return f"{code} {diagnosis_title(code, recorded)}".strip()


@bp.app_template_filter("record_month")
def record_month(value: str) -> str:
    """Show a ``YYYY-MM`` month as 11/2026."""
    year, _sep, month = (value or "").partition("-")
    return f"{month}/{year}" if year and month else value


@bp.app_template_filter("signer_name")
def signer_name(subject: str | None) -> str:
    """Show a certificate subject (``CN=…,O=…,C=VN``) as "name, organisation"."""
    try:
        name = x509.Name.from_rfc4514_string(subject or "")
    except ValueError:
        return subject or ""
    parts = [
        str(attribute.value)
        for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
        for attribute in name.get_attributes_for_oid(oid)
    ]
    return ", ".join(parts) or (subject or "")


def _actor() -> Actor:
    principal = current_principal()
    assert principal.user_id is not None
    return Actor(
        principal.user_id, principal.username, principal.full_name, principal.site_id, principal.role or ""
    )


def _secret() -> str:
    return str(current_app.config["SECRET_KEY"])


def _today() -> date:
    return datetime.now(local_zone()).date()


def _locale() -> str:
    return str(get_locale() or "vi")


def _site() -> Site:
    principal = current_principal()
    site = get_session().get(Site, principal.site_id) if principal.site_id else None
    if site is None:
        raise Forbidden(_("Only staff of a site can use this page."), code="NO_SITE")
    return site


def _encounter_for(encounter_id: str, action: str) -> services.EncounterView:
    encounter = services.load_encounter(get_session(), encounter_id)
    ensure_patient_access(current_principal(), encounter.patient_id, action)
    return encounter


@bp.get("/records/")
@roles_required(*CLINICIANS)
def worklist() -> str:
    """Show today's checked-in patients of the doctor's site in queue order."""
    clinic = request.args.get("clinic") or None
    entries = services.worklist(get_session(), _site(), _today(), local_zone(), location_id=clinic)
    audit.record("read", "Worklist", None, detail=f"{len(entries)} encounters")
    return render_template("records/worklist.html", entries=entries, today=_today())


def _warnings_view(plan: services.Plan | None) -> list[dict[str, Any]]:
    if plan is None:
        return []
    return [
        {"key": w.key, "kind": w.kind, "severity": w.severity, "message": w.render(_), "advice": w.advice}
        for w in plan.warnings
    ]


def _order_category_labels() -> dict[str, str]:
    labels = {"lab": _("Laboratory"), "imaging": _("Imaging"), "pathology": _("Pathology")}
    return {coding["code"]: labels[key] for key, coding in services.mapping.ORDER_CATEGORIES.items()}


def _render_encounter(
    encounter_id: str, *, errors: dict[str, str] | None = None, message: str = "", status: int = 200
) -> tuple[str, int]:
    session = get_session()
    record = services.encounter_record(session, encounter_id)
    patient = services.store.read(session, "Patient", record.encounter.patient_id).resource
    draft = services.draft_of(session, encounter_id)
    plan = None
    if draft is not None:
        try:
            plan = services.replan(session, draft, on=_today(), locale=_locale())
        except ValidationFailed as exc:
            errors = {**(errors or {}), **exc.fields}
    signed = session.scalars(
        select(Signature).where(Signature.encounter_id == encounter_id).order_by(Signature.id)
    ).all()
    prescriptions = session.scalars(
        select(Prescription).where(Prescription.encounter_id == encounter_id)
    ).all()
    outbox = {
        m.prescription_id: {"status": m.status, "errors": errors_of(m), "attempts": m.attempts}
        for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.prescription_id.in_([p.id for p in prescriptions]))
        )
    }
    html = render_template(
        "records/encounter.html",
        record=record,
        patient=patient,
        patient_name=services.patient_name(patient),
        draft=draft,
        plan=plan,
        warnings=_warnings_view(plan),
        signatures=signed,
        prescriptions=prescriptions,
        outbox=outbox,
        past=services.past_encounters(session, record.encounter.patient_id, exclude=encounter_id),
        errors=errors or {},
        message=message,
        form=request.form if request.method == "POST" else {},
        signed=bool(signed),
        performed=services.performed_orders(session, encounter_id),
        orderable=orderable_services().values(),
        locale=_locale(),
        category_labels=_order_category_labels(),
        vital_labels=_vital_labels(),
        note_labels=_note_labels(),
    )
    return html, status


@bp.get("/records/encounters/<encounter_id>")
@roles_required(*CLINICIANS)
def encounter(encounter_id: str) -> tuple[str, int]:
    """Open an encounter: put it in progress and show the record with its forms."""
    _encounter_for(encounter_id, "write")
    session = get_session()
    if not services.is_signed(session, encounter_id) and current_principal().role == "doctor":
        services.start_encounter(session, encounter_id, _actor())
    audit.record(
        "read",
        "Encounter",
        encounter_id,
        patient_id=services.load_encounter(session, encounter_id).patient_id,
    )
    return _render_encounter(encounter_id)


def _act(encounter_id: str, action: Callable[[], object], done: str) -> tuple[str, int] | BaseResponse:
    encounter = _encounter_for(encounter_id, "write")
    try:
        action()
    except (ValidationFailed, Conflict) as exc:
        get_session().rollback()
        return _render_encounter(encounter_id, errors=exc.fields, message=_(exc.message), status=exc.status)
    audit.record("update", "Encounter", encounter_id, patient_id=encounter.patient_id, detail=done)
    return redirect(url_for("records.encounter", encounter_id=encounter_id, done=done) + f"#{done}", code=303)


@bp.post("/records/encounters/<encounter_id>/vitals")
@roles_required(*CLINICIANS)
def vitals(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Record vital signs."""
    errors: dict[str, str] = {}
    values = {
        name: services.parse_decimal(request.form.get(name), name, errors)
        for name in (
            "systolic",
            "diastolic",
            "pulse",
            "temperature",
            "respiratory_rate",
            "spo2",
            "weight",
            "height",
        )
    }
    if errors:
        return _render_encounter(
            encounter_id, errors=errors, message=_("Some vital signs are not valid."), status=422
        )
    return _act(
        encounter_id,
        lambda: services.record_vitals(get_session(), encounter_id, Vitals(**values), _actor()),
        "vitals",
    )


@bp.post("/records/encounters/<encounter_id>/diagnoses")
@roles_required("doctor")
def diagnoses(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Add an ICD-10 diagnosis."""
    code = request.form.get("icd10", "").split(" ")[0]
    note = request.form.get("diagnosis_note", "")
    return _act(
        encounter_id,
        lambda: services.add_diagnosis(get_session(), encounter_id, code, _actor(), note=note),
        "diagnoses",
    )


@bp.post("/records/encounters/<encounter_id>/allergies")
@roles_required(*CLINICIANS)
def allergies(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Record a drug allergy."""
    substance, reaction = request.form.get("substance", ""), request.form.get("reaction", "")
    return _act(
        encounter_id,
        lambda: services.add_allergy(get_session(), encounter_id, substance, _actor(), reaction=reaction),
        "allergies",
    )


@bp.post("/records/encounters/<encounter_id>/orders")
@roles_required("doctor")
def orders(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Order a service of the catalogue, or a lab test, imaging or pathology in free text."""
    category, what = request.form.get("category", ""), request.form.get("order", "")
    service = request.form.get("service", "")
    return _act(
        encounter_id,
        lambda: services.add_order(
            get_session(), encounter_id, category, what, _actor(), service_code=service
        ),
        "orders",
    )


@bp.post("/records/encounters/<encounter_id>/orders/<order_id>/performed")
@roles_required(*CLINICIANS)
def perform_order(encounter_id: str, order_id: str) -> tuple[str, int] | BaseResponse:
    """Mark an order performed (also after signing): a Procedure based on it, charged if coded."""
    return _act(
        encounter_id,
        lambda: services.perform_order(get_session(), encounter_id, order_id, _actor()),
        "orders",
    )


@bp.post("/records/encounters/<encounter_id>/note")
@roles_required("doctor")
def note(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Save the chief complaint, history, examination and plan."""
    sections = {
        name: request.form.get(name, "") for name in ("chief_complaint", "history", "examination", "plan")
    }
    return _act(
        encounter_id, lambda: services.save_note(get_session(), encounter_id, sections, _actor()), "note"
    )


def _draft_from_form() -> tuple[DraftPrescription | None, dict[str, str]]:
    form = request.form
    errors: dict[str, str] = {}
    codes, dosages, notes = form.getlist("drug"), form.getlist("dosage"), form.getlist("line_note")
    lines = tuple(
        DraftLine(code.strip(), dosages[i] if i < len(dosages) else "", notes[i] if i < len(notes) else "")
        for i, code in enumerate(codes)
        if code.strip()
    )
    try:
        days = int(form.get("days", "0"))
    except ValueError:
        errors["days"] = _("Enter a whole number of days.")
        days = 0
    weight = services.parse_decimal(form.get("weight"), "weight", errors)
    follow_up = None
    if form.get("follow_up"):
        try:
            follow_up = date.fromisoformat(form["follow_up"])
        except ValueError:
            errors["follow_up"] = _("Use the format YYYY-MM-DD.")
    if errors:
        return None, errors
    return (
        DraftPrescription(lines, days, weight, form.get("guardian_name"), form.get("advice", ""), follow_up),
        errors,
    )


@bp.post("/records/encounters/<encounter_id>/prescription")
@roles_required("doctor")
def prescription(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Save the prescription as a draft and show its safety warnings."""
    draft, errors = _draft_from_form()
    if draft is None:
        return _render_encounter(
            encounter_id, errors=errors, message=_("The prescription cannot be saved."), status=422
        )
    return _act(
        encounter_id,
        lambda: services.save_prescription(
            get_session(), encounter_id, draft, _actor(), on=_today(), locale=_locale()
        ),
        "prescription",
    )


@bp.post("/records/encounters/<encounter_id>/sign")
@roles_required("doctor")
def sign(encounter_id: str) -> tuple[str, int] | BaseResponse:
    """Sign the encounter and its prescription; every warning needs an override reason."""
    overrides = {
        key[len("reason:") :]: value for key, value in request.form.items() if key.startswith("reason:")
    }
    return _act(
        encounter_id,
        lambda: signatures.sign_encounter(
            get_session(),
            encounter_id,
            _actor(),
            overrides=overrides,
            secret=_secret(),
            on=_today(),
            locale=_locale(),
        ),
        "signed",
    )


@bp.route("/records/encounters/<encounter_id>/amend", methods=["GET", "POST"])
@roles_required("doctor")
def amend(encounter_id: str) -> str | tuple[str, int] | BaseResponse:
    """Amend the note of a signed encounter: a new signed version naming the old one and why."""
    encounter = _encounter_for(encounter_id, "write")
    session = get_session()
    record = services.encounter_record(session, encounter_id)
    notes = services.store.search(
        session, "Composition", [("encounter", f"Encounter/{encounter_id}")]
    ).matches
    errors: dict[str, str] = {}
    message = ""
    if request.method == "POST":
        sections = {
            name: request.form.get(name, "") for name in ("chief_complaint", "history", "examination", "plan")
        }
        try:
            if not services.is_signed(session, encounter_id):
                raise Conflict(
                    _("Only the note of a signed record is amended here."), code="NOTHING_TO_AMEND"
                )
            rebuilt = services.mapping.clinical_note(
                sections,
                encounter.patient_id,
                encounter_id,
                services.now_text(),
                services.practitioner_reference(session, _actor()),
                notes[0].resource.get("title", "Khám bệnh") if notes else "Khám bệnh",
            )
            reason = request.form.get("reason", "")
            if notes:
                rebuilt.update(id=notes[0].id, status="amended")
                signatures.amend(session, encounter_id, rebuilt, _actor(), reason=reason, secret=_secret())
            else:
                rebuilt["status"] = "final"
                signatures.addendum(session, encounter_id, rebuilt, _actor(), reason=reason, secret=_secret())
        except (ValidationFailed, Conflict) as exc:
            session.rollback()
            errors, message = exc.fields, _(exc.message)
        else:
            audit.record("amend", "Encounter", encounter_id, patient_id=encounter.patient_id)
            return redirect(url_for("records.encounter", encounter_id=encounter_id, done="amended"), code=303)
    html = render_template(
        "records/amend.html", record=record, errors=errors, message=message, form=request.form
    )
    return (html, 422) if errors or message else html


@bp.get("/records/certificates/<prefix>.pem")
def certificate(prefix: str) -> Response:
    """Publish a signer's certificate and its chain (public), named by its fingerprint's start.

    With it, anyone holding a printed QR can check the signature offline.
    """
    from his.records.models import SigningKey

    if len(prefix) < 16 or not all(c in "0123456789abcdef" for c in prefix):
        raise NotFound()
    row = get_session().scalar(select(SigningKey).where(SigningKey.fingerprint.startswith(prefix)))
    if row is None:
        raise NotFound()
    return Response(row.certificate_pem + row.chain_pem, mimetype="application/x-pem-file")


@bp.get("/records/icd10.json")
@login_required
def icd10_search() -> Response:
    """Find ICD-10 codes by code or Vietnamese words, diacritics optional."""
    found = search_icd10(request.args.get("q", ""), limit=20)
    return jsonify([{"code": e.code, "vi": e.vi, "en": e.en} for e in found])


@bp.get("/records/drugs.json")
@login_required
def drug_search() -> Response:
    """Find drugs of the catalogue by code, name or ingredient."""
    found = services.search_drugs(get_session(), request.args.get("q", ""))
    return jsonify(
        [
            {
                "code": d.code,
                "name": d.name,
                "unit": d.unit,
                "dose_unit": d.dose_unit,
                "narcotic": d.narcotic,
                "psychotropic": d.psychotropic,
                "antibiotic": d.antibiotic,
            }
            for d in found
        ]
    )


@bp.get("/records/prescriptions/<code>/qr.svg")
@login_required
def prescription_qr(code: str) -> Response:
    """Return the prescription's QR (code + signature) as SVG."""
    import io

    import segno

    session = get_session()
    found, _qr = pharmacy.find(session, code)
    ensure_patient_access(current_principal(), found.patient_id, "read")
    buffer = io.BytesIO()
    segno.make(pharmacy.qr_text(session, found, _secret()), error="m").save(
        buffer, kind="svg", scale=4, border=2
    )
    return Response(buffer.getvalue(), mimetype="image/svg+xml")


@bp.get("/records/prescriptions/<code>/print")
@login_required
def print_prescription(code: str) -> str:
    """Show the prescription laid out for an A5 sheet, with its code and QR."""
    session = get_session()
    found, _qr = pharmacy.find(session, code)
    ensure_patient_access(current_principal(), found.patient_id, "read")
    if found.status != "signed":
        raise Conflict(_("The prescription is not signed yet."), code="PRESCRIPTION_NOT_SIGNED")
    state = pharmacy.view(session, found, today=_today())
    patient = services.store.read(session, "Patient", found.patient_id).resource
    conditions = services.store.search(
        session, "Condition", [("encounter", f"Encounter/{found.encounter_id}"), ("_count", "50")]
    ).matches
    prescriber = session.get(User, found.prescriber_id)
    audit.record("print", "Prescription", found.code, patient_id=found.patient_id)
    return render_template(
        "records/print.html",
        state=state,
        patient=patient,
        patient_name=services.patient_name(patient),
        site=session.get(Site, found.site_id),
        diagnoses=[c.resource["code"] for c in conditions],
        prescriber=prescriber,
        months=services.patient_facts(session, found.patient_id, None, None).age_months(_today()),
    )


PDF_ROLES = ("doctor", "pharmacist", "patient")


@bp.get("/records/prescriptions/<code>.pdf")
@login_required
def prescription_pdf(code: str) -> Response:
    """Download a signed prescription as an A5 PDF with its code and authenticity QR.

    Doctors and pharmacists of a site that cares for the patient, and the patient or a
    linked parent, may download it; anyone else gets 403 (audited). An unsigned
    prescription gets 409.
    """
    from his.records.printing import render_pdf, sheet_of

    session = get_session()
    found, _qr = pharmacy.find(session, code)
    principal = current_principal()
    if principal.role not in PDF_ROLES:
        audit.record("read", "Prescription", found.code, patient_id=found.patient_id, outcome="denied")
        raise Forbidden(_("Your role does not allow this."), code="ROLE_REQUIRED")
    ensure_patient_access(principal, found.patient_id, "read")
    sheet = sheet_of(session, found, secret=_secret(), zone=local_zone())
    document = render_pdf(current_app, sheet)
    audit.record("read", "Prescription", found.code, patient_id=found.patient_id, detail="pdf")
    response = Response(document, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="don-thuoc-{found.code}.pdf"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/records/reports/antibiotics")
@roles_required("manager", "doctor")
def antibiotic_report() -> str | Response:
    """Show antibiotic use by month, clinic and doctor, as a chart and as CSV."""
    from his.records import reports

    today = _today()
    try:
        start = (
            date.fromisoformat(request.args.get("from", ""))
            if request.args.get("from")
            else today.replace(day=1)
        )
        end = date.fromisoformat(request.args.get("to", "")) if request.args.get("to") else today
    except ValueError:
        raise ValidationFailed(_("Use the format YYYY-MM-DD."), fields={"from": _("Invalid.")}) from None
    rows = reports.antibiotic_use(get_session(), _site().id, start, end, local_zone())
    audit.record("read", "Report", "antibiotic-use")
    if request.args.get("format") == "csv":
        response = Response(reports.to_csv(rows), mimetype="text/csv")
        response.headers["Content-Disposition"] = f"attachment; filename=antibiotic-use-{start}-{end}.csv"
        return response
    months = reports.by_month(rows)
    return render_template(
        "records/antibiotics.html",
        rows=rows,
        months=months,
        total=reports.totals(rows),
        start=start,
        end=end,
        top=max([m.share for m in months] + [Decimal(1)]),
    )


def _pharmacy_queue() -> pharmacy.QueuePage:
    """Read the page of the site's pharmacy queue the request asks for, and audit the list read."""
    raw = request.args.get("page", "1").strip() or "1"
    try:
        number = int(raw)
    except ValueError:
        raise ValidationFailed(_("The page must be 1 or more."), fields={"page": _("Invalid.")}) from None
    queue = pharmacy.waiting(get_session(), _site().id, today=_today(), page=number)
    audit.record(
        "read",
        "PharmacyQueue",
        None,
        detail=f"page {queue.page}: " + " ".join(entry.code for entry in queue.entries),
    )
    return queue


def _pharmacy_find(query: str, error: str = "") -> str:
    return render_template("records/pharmacy_find.html", query=query, error=error, queue=_pharmacy_queue())


@bp.get("/pharmacy/")
@roles_required("pharmacist")
def pharmacy_home() -> str | BaseResponse | tuple[str, int]:
    """List the prescriptions waiting at the site's pharmacy; find one by code or by its scanned QR."""
    query = request.args.get("q", "").strip()
    if not query:
        return _pharmacy_find("")
    try:
        found, qr = pharmacy.find(get_session(), query)
    except (ValidationFailed, NotFound) as exc:
        audit.record("search", "Prescription", None, outcome="failure", detail=query[:100])
        return _pharmacy_find(query, _(exc.message)), exc.status
    if qr is not None and not qr.authentic:
        audit.record(
            "search",
            "Prescription",
            found.code,
            patient_id=found.patient_id,
            outcome="failure",
            detail="forged QR",
        )
        return _pharmacy_find(query, _(qr.problem)), 409
    return redirect(url_for("records.pharmacy_prescription", code=found.code))


def _pharmacy_page(
    code: str, *, errors: dict[str, str] | None = None, message: str = "", status: int = 200
) -> tuple[str, int]:
    session = get_session()
    found, _qr = pharmacy.find(session, code)
    ensure_patient_access(current_principal(), found.patient_id, "read")
    state = pharmacy.view(session, found, today=_today())
    patient = services.store.read(session, "Patient", found.patient_id).resource
    audit.record("read", "Prescription", found.code, patient_id=found.patient_id)
    return (
        render_template(
            "records/pharmacy_prescription.html",
            state=state,
            patient_name=services.patient_name(patient),
            patient=patient,
            errors=errors or {},
            message=message,
        ),
        status,
    )


@bp.get("/pharmacy/prescriptions/<code>")
@roles_required("pharmacist")
def pharmacy_prescription(code: str) -> tuple[str, int]:
    """Show whether a prescription's signature is valid, whether it was dispensed or expired."""
    return _pharmacy_page(code)


@bp.post("/pharmacy/prescriptions/<code>/dispense")
@roles_required("pharmacist")
def dispense(code: str) -> tuple[str, int] | BaseResponse:
    """Dispense all or part of a prescription, never beyond what was prescribed."""
    session = get_session()
    found, _qr = pharmacy.find(session, code)
    ensure_patient_access(current_principal(), found.patient_id, "write")
    quantities: dict[int, Decimal] = {}
    errors: dict[str, str] = {}
    for key, value in request.form.items():
        if key.startswith("qty:") and value.strip():
            amount = services.parse_decimal(value, key, errors)
            try:
                item_id = int(key[4:])
            except ValueError:
                continue
            if amount is not None:
                quantities[item_id] = amount
    try:
        if errors:
            raise ValidationFailed(_("The amounts to dispense are not valid."), fields=errors)
        pharmacy.dispense(session, found, quantities, _actor(), today=_today())
    except (ValidationFailed, Conflict) as exc:
        session.rollback()
        return _pharmacy_page(found.code, errors=exc.fields, message=_(exc.message), status=exc.status)
    audit.record("dispense", "Prescription", found.code, patient_id=found.patient_id)
    publish(
        "prescription.dispensed",
        {
            "code": found.code,
            "patient": found.patient_id,
            "items": {str(k): str(v) for k, v in quantities.items()},
        },
    )
    return redirect(url_for("records.pharmacy_prescription", code=found.code, done="dispensed"), code=303)


@bp.get("/records/my")
@roles_required("patient")
def my_records() -> str:
    """Show the patient their visits, diagnoses and prescriptions with QR codes."""
    principal = current_principal()
    session = get_session()
    visits = services.past_encounters(session, principal.patient_id, limit=50) if principal.patient_id else []
    found = session.scalars(
        select(Prescription)
        .where(Prescription.patient_id == principal.patient_id, Prescription.status == "signed")
        .order_by(Prescription.signed_at.desc())
    ).all()
    states = [pharmacy.view(session, p, today=_today()) for p in found]
    audit.record(
        "read", "Patient", principal.patient_id, patient_id=principal.patient_id, detail="own records"
    )
    return render_template("records/my_records.html", visits=visits, prescriptions=states)


def _verification_json(report: signatures.Verification) -> dict[str, Any]:
    return {
        "provenance": report.provenance_id,
        "valid": report.valid,
        "signer": report.signer,
        "signed_at": report.signed_at,
        "targets": report.targets,
        "amended_by": report.amended_by,
        "problems": [
            {"reference": p.reference, "message": p.message, "paths": list(p.paths)} for p in report.problems
        ],
    }


VERIFICATION_OUTPUT = {
    "type": "object",
    "required": ["valid", "signatures"],
    "properties": {
        "valid": {"type": "boolean"},
        "signatures": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "provenance": {"type": "string"},
                    "valid": {"type": "boolean"},
                    "signer": {"type": "string"},
                    "signed_at": {"type": "string", "format": "date-time"},
                    "targets": {"type": "array", "items": {"type": "string"}},
                    "amended_by": {"type": "array", "items": {"type": "string"}},
                    "problems": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "reference": {"type": "string"},
                                "message": {"type": "string"},
                                "paths": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}


@bp.get("/api/v1/records/verify/<target>")
@login_required
@api_doc(
    "Verify the signatures of a record (Provenance id, encounter id or prescription code) and name any change",
    tags=["records"],
    responses={200: VERIFICATION_OUTPUT, 401: None, 403: None, 404: None},
)
def verify_api(target: str) -> Response:
    """Verify every signature of a record (Provenance id, encounter id or prescription code)."""
    principal = current_principal()
    if not principal.is_staff:
        raise Forbidden(_("Only staff may verify records here."))
    session = get_session()
    found = signatures.signatures_for(session, target)
    encounter = services.load_encounter(session, found[0].encounter_id)
    ensure_patient_access(principal, encounter.patient_id, "read")
    reports = [signatures.verify(session, s) for s in found]
    audit.record("verify", "Provenance", found[0].provenance_id, patient_id=encounter.patient_id)
    return jsonify(valid=all(r.valid for r in reports), signatures=[_verification_json(r) for r in reports])


@bp.cli.command("verify")
@click.argument("target")
@with_appcontext
def verify_command(target: str) -> None:
    """Verify a signed record by Provenance id, encounter id or prescription code (exit 1 if invalid)."""
    with get_database().session_scope() as session:
        try:
            found = signatures.signatures_for(session, target)
        except VetinhError as exc:
            click.echo(f"NOT FOUND: {exc.message}", err=True)
            sys.exit(2)
        reports = [signatures.verify(session, s) for s in found]
    for report in reports:
        click.echo(f"{'VALID' if report.valid else 'INVALID'}  Provenance/{report.provenance_id}")
        click.echo(f"  signer: {report.signer}")
        click.echo(f"  signed: {report.signed_at}")
        for reference in report.targets:
            click.echo(f"  covers: {reference}")
        for reference in report.amended_by:
            click.echo(f"  amended by a signed version: {reference}")
        for problem in report.problems:
            where = f" at {', '.join(problem.paths)}" if problem.paths else ""
            click.echo(f"  PROBLEM {problem.reference}: {problem.message}{where}")
    sys.exit(0 if all(r.valid for r in reports) else 1)


@bp.cli.command("import-drugs")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@with_appcontext
def import_drugs_command(path: str) -> None:
    """Add or update drugs of the catalogue from a CSV file (columns as in the seed file)."""
    from pathlib import Path

    with get_database().session_scope() as session:
        try:
            count = services.import_drugs(session, Path(path).read_text(encoding="utf-8"))
        except ValidationFailed as exc:
            for field_name, problem in exc.fields.items():
                click.echo(f"{field_name}: {problem}", err=True)
            sys.exit(1)
    click.echo(f"{count} drugs imported.")


@bp.cli.command("import-signing-key")
@click.argument("username")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--password", prompt=True, hide_input=True, default="", help="Password of the PKCS#12 file.")
@with_appcontext
def import_signing_key_command(username: str, path: str, password: str) -> None:
    """Give a doctor or pharmacist a key and certificate from a real CA (a PKCS#12 file).

    An administrator runs this after checking the certificate: its chain becomes trusted.
    """
    from pathlib import Path

    from his.records.signing import import_pkcs12

    with get_database().session_scope() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or user.role not in ("doctor", "pharmacist"):
            click.echo(f"{username}: no doctor or pharmacist by this name.", err=True)
            sys.exit(2)
        try:
            row = import_pkcs12(session, user, Path(path).read_bytes(), password, _secret())
        except VetinhError as exc:
            click.echo(exc.message, err=True)
            sys.exit(1)
        click.echo(f"{username} now signs as {row.subject} (SHA-256 {row.fingerprint}).")


@bp.cli.command("send-prescriptions")
@click.option("--endpoint", required=True, help="URL of the national prescription system.")
@with_appcontext
def send_prescriptions_command(endpoint: str) -> None:
    """Send the signed prescriptions waiting in the outbox once."""
    from his.records.national import send_pending

    with get_database().session_scope() as session:
        results = send_pending(session, endpoint)
    for result in results:
        click.echo(f"{result.message_id}: {result.status} {result.detail}".rstrip())
