"""HTTP entry points of billing: prices, the cashier's invoices and charges, BHYT cards, VietQR, bank notices."""

from __future__ import annotations

import io
import zipfile
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

import billing.demo
import billing.jobs  # noqa: F401 - registers the outbox jobs
from billing.charges import ChargeNotFound, add_manual_charge, charges_of_encounter, void_charge
from billing.claims import claim_document, claims_between
from billing.coverage import CardEntry, active_coverage, entry_from_gateway, register_card
from billing.gateway import EligibilityGateway
from billing.invoices import (
    Facility,
    UnpricedCharges,
    get_invoice,
    get_or_create_invoice,
    invoice_by_reference,
    open_invoice,
    refresh_invoice,
    unpriced_charges,
)
from billing.models import PRICE_KINDS, Charge, CoverageRecord, Invoice
from billing.payments import (
    SIGNATURE_HEADER,
    BadSignature,
    BankAccount,
    NothingToPay,
    payments_of,
    read_transfer,
    receive_notification,
    record_desk_payment,
    refund,
    refunds_of,
    resolve_review,
    review_count,
    review_queue,
    transfer_note,
    verify_signature,
    vietqr_payload,
)
from billing.receipts import (
    ReceiptUnavailable,
    Seller,
    format_quantity,
    issue_receipt,
    receipt_of,
    render_pdf,
    sheet_of,
)
from billing.reports import daily_report as build_daily_report
from billing.reports import report_csv
from billing.rules import FacilityLevel
from billing.services import (
    PriceImportFailed,
    all_prices_on,
    export_prices_csv,
    import_prices,
    read_price_csv,
    search_prices,
)
from billing.subscribers import ChargeListener
from billing.vietqr import render_png, render_svg
from billing.xmlsign import load_signing_material, sign_envelope
from his import audit
from his.db import begin_immediate, get_session, utcnow
from his.errors import N_, ConfigurationError, ValidationFailed, VetinhError
from his.events import sse_response
from his.i18n import format_day, local_zone
from his.models import Site
from his.navigation import add_nav_item
from his.openapi import api_doc
from his.patients import patient_summary
from his.policy import ensure_patient_access, ensure_role, linked_patient_ids, may_access_patient
from his.security import current_principal, login_required, roles_required, scope_required

bp = Blueprint(
    "billing",
    __name__,
    template_folder="templates",
    static_folder="static/billing",
    static_url_path="/static/billing",
)

ALL_ROLES = {
    "patient",
    "receptionist",
    "nurse",
    "doctor",
    "pharmacist",
    "pathologist",
    "cashier",
    "manager",
    "admin",
}
PRICE_EDITORS = ("manager", "admin")
KIND_LABELS = {
    "visit": _l("Medical examinations"),
    "service": _l("Services"),
    "drug": _l("Drugs"),
    "supply": _l("Supplies"),
    "bed": _l("Beds"),
    "other": _l("Other"),
}

add_nav_item("billing.prices", _l("Price list"), ALL_ROLES, icon="tag", order=60)

LISTENER_KEY = "billing.charge_listener"


@bp.record_once
def _start_charge_listener(state: BlueprintSetupState) -> None:
    """Charge from other contexts' events in serving processes (the scheduler's setting unless overridden).

    ``VETINH_BILLING_EVENT_LISTENER`` turns it on or off explicitly; every process may
    listen, since a charge's source makes a second handling of one event a no-op.
    """
    app = state.app
    if not isinstance(app, Flask):
        return
    settings = app.extensions.get("vetinh.settings")
    default = bool(settings.scheduler_enabled) if settings is not None else False
    if app.config.get("VETINH_BILLING_EVENT_LISTENER", default):
        app.extensions[LISTENER_KEY] = ChargeListener(app).start()


def _requested_day() -> date:
    """Read ``?day=`` (the price list on another date), else today in the hospital's time zone."""
    text = request.args.get("day", "").strip()
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError:
            flash(_("The date was not understood; showing today's prices."), "error")
    return datetime.now(local_zone()).date()


def _requested_kind() -> str | None:
    kind = request.args.get("kind", "")
    return kind if kind in PRICE_KINDS else None


@bp.get("/prices")
def prices() -> str:
    """Show the public price list (Bảng giá), searchable by code or name, to anyone."""
    day = _requested_day()
    query = request.args.get("q", "").strip()[:200]
    kind = _requested_kind()
    page = request.args.get("page", 1, type=int) or 1
    result = search_prices(get_session(), day, query=query, kind=kind, page=page)
    principal = current_principal()
    return render_template(
        "billing/prices.html",
        result=result,
        day=day,
        query=query,
        kind=kind,
        kind_labels=KIND_LABELS,
        can_import=principal.role in PRICE_EDITORS,
        import_errors=None,
    )


@bp.get("/prices.csv")
def prices_csv() -> Response:
    """Download the price list in force on the day asked for (all items, or those matching the search)."""
    day = _requested_day()
    query = request.args.get("q", "").strip()[:200]
    kind = _requested_kind()
    session = get_session()
    if query or kind:
        entries = search_prices(session, day, query=query, kind=kind, per_page=1_000_000).entries
    else:
        entries = all_prices_on(session, day)
    return Response(
        export_prices_csv(entries),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="prices-{day.isoformat()}.csv"'},
    )


@bp.post("/prices/import")
@roles_required(*PRICE_EDITORS)
def import_price_list() -> BaseResponse | tuple[str, int]:
    """Import a CSV price list uploaded by a manager; a file with any bad row changes nothing."""
    upload = request.files.get("file")
    session = get_session()
    try:
        if upload is None or not upload.filename:
            raise PriceImportFailed(
                _("Choose a CSV file to import."), fields={"file": _("Choose a CSV file to import.")}
            )
        rows = read_price_csv(upload.read())
    except (PriceImportFailed, UnicodeDecodeError) as exc:
        errors = exc.extra.get("rows", []) if isinstance(exc, PriceImportFailed) else []
        message = exc.message if isinstance(exc, PriceImportFailed) else _("The file is not UTF-8 text.")
        audit.record("import", "PriceList", outcome="failure", detail=str(message))
        day = datetime.now(local_zone()).date()
        page = render_template(
            "billing/prices.html",
            result=search_prices(session, day),
            day=day,
            query="",
            kind=None,
            kind_labels=KIND_LABELS,
            can_import=True,
            import_errors={"message": message, "rows": errors, "fields": getattr(exc, "fields", {})},
        )
        return page, 422
    outcome = import_prices(session, rows)
    audit.record(
        "import",
        "PriceList",
        detail=f"created={outcome.created} updated={outcome.updated} unchanged={outcome.unchanged}",
    )
    flash(
        _(
            "Price list imported: %(created)d new, %(updated)d updated, %(unchanged)d unchanged.",
            created=outcome.created,
            updated=outcome.updated,
            unchanged=outcome.unchanged,
        ),
        "success",
    )
    return redirect(url_for("billing.prices"))


CASHIER_ROLES = ("cashier", "manager")
PATIENT_ROLE = "patient"

add_nav_item("billing.cashier_home", _l("Cashier"), set(CASHIER_ROLES), icon="wallet", order=55)
add_nav_item("billing.my_invoices", _l("My bills"), {PATIENT_ROLE}, icon="wallet", order=55)


def _zone() -> ZoneInfo:
    return local_zone()


def _facility() -> Facility:
    """Describe the cashier's own hospital for the referral rules (district: primary level)."""
    principal = current_principal()
    site = get_session().get(Site, principal.site_id) if principal.site_id else None
    level = (
        FacilityLevel.SPECIALIZED if site is not None and site.kind == "central" else FacilityLevel.PRIMARY
    )
    configured = current_app.config.get("VETINH_FACILITY_LEVEL")
    if configured in {item.value for item in FacilityLevel}:
        level = FacilityLevel(configured)
    return Facility(code=(site.facility_code or "") if site else "", level=level)


DEMO_BANK_ACCOUNT = BankAccount(bank_bin="970436", account="0000000000")


def _bank_account() -> BankAccount | None:
    """Return the configured account VietQR transfers go to.

    In development mode without one (``make run``), a made-up demonstration account, so
    the demo shows its QR codes; the pages then say not to transfer real money.
    """
    bank_bin = current_app.config.get("VETINH_BANK_BIN")
    account = current_app.config.get("VETINH_BANK_ACCOUNT")
    if not bank_bin or not account:
        settings = current_app.extensions.get("vetinh.settings")
        return DEMO_BANK_ACCOUNT if settings is not None and settings.env == "development" else None
    return BankAccount(bank_bin=str(bank_bin), account=str(account))


def _username() -> str:
    return current_principal().username


def _fail(error: VetinhError) -> None:
    """Undo the request's writes and tell the user why, by the error's own message."""
    get_session().rollback()
    detail = "; ".join(_(str(value)) for value in error.fields.values() if value)
    text = _(error.message)
    flash(f"{text} {detail}".strip() if detail and detail != text else text, "error")


def _invoice_for_staff(invoice_id: int, action: str = "read") -> Invoice:
    invoice = get_invoice(get_session(), invoice_id)
    ensure_patient_access(current_principal(), invoice.patient_id, action)
    return invoice


def _invoice_for_viewer(invoice_id: int) -> Invoice:
    """Return an invoice the caller may see: staff of a caring site, or the patient themself."""
    invoice = get_invoice(get_session(), invoice_id)
    principal = current_principal()
    if principal.is_staff and principal.kind != "client":
        ensure_role(principal, *CASHIER_ROLES)
    ensure_patient_access(principal, invoice.patient_id, "read")
    return invoice


def _qr_payload(invoice: Invoice) -> str | None:
    try:
        return vietqr_payload(get_session(), invoice, _bank_account())
    except (NothingToPay, UnpricedCharges, ConfigurationError):
        return None


def _invoice_context(invoice: Invoice) -> dict[str, Any]:
    session = get_session()
    payload = _qr_payload(invoice)
    return {
        "invoice": invoice,
        "charges": charges_of_encounter(session, invoice.encounter_id),
        "payments": payments_of(session, invoice.id),
        "refunds": refunds_of(session, invoice.id),
        "unpriced": unpriced_charges(session, invoice.encounter_id),
        "payload": payload,
        "demo_account": payload is not None and _bank_account() is DEMO_BANK_ACCOUNT,
        "note": transfer_note(invoice),
        "coverage": session.get(CoverageRecord, invoice.coverage_id) if invoice.coverage_id else None,
        "receipt": receipt_of(session, invoice.id) if invoice.status == "paid" else None,
    }


@bp.get("/billing")
@roles_required(*CASHIER_ROLES)
def cashier_home() -> str:
    """List the open and recent invoices and the size of the review queue."""
    session = get_session()
    invoices = session.scalars(select(Invoice).order_by(Invoice.updated_at.desc()).limit(100)).all()
    principal = current_principal()
    visible = [inv for inv in invoices if may_access_patient(principal, inv.patient_id, "read")]
    return render_template("billing/cashier_home.html", invoices=visible, review_count=review_count(session))


@bp.get("/billing/encounters/<encounter_id>/invoice")
@roles_required(*CASHIER_ROLES)
def encounter_invoice(encounter_id: str) -> BaseResponse:
    """Open (or bring up to date) the encounter's invoice and show it."""
    session = get_session()
    invoice = open_invoice(session, encounter_id, _facility(), zone=_zone())
    ensure_patient_access(current_principal(), invoice.patient_id, "read")
    return redirect(url_for("billing.cashier_invoice", invoice_id=invoice.id))


@bp.get("/billing/invoices/<int:invoice_id>")
@roles_required(*CASHIER_ROLES)
def cashier_invoice(invoice_id: int) -> str:
    """Show the cashier an invoice brought up to date: lines, shares, QR, payments and actions."""
    invoice = _invoice_for_staff(invoice_id)
    refresh_invoice(get_session(), invoice, _facility())
    audit.record("read", "Invoice", str(invoice.id), patient_id=invoice.patient_id)
    return render_template("billing/invoice.html", **_invoice_context(invoice), staff=True)


@bp.get("/billing/invoices/<int:invoice_id>/status")
@roles_required(*CASHIER_ROLES)
def cashier_invoice_status(invoice_id: int) -> str:
    """Return the invoice's status panel alone, for the cashier page to swap in when a payment arrives."""
    invoice = _invoice_for_staff(invoice_id)
    audit.record("read", "Invoice", str(invoice.id), patient_id=invoice.patient_id)
    return render_template("billing/_invoice_status.html", **_invoice_context(invoice), staff=True)


@bp.get("/billing/events")
@roles_required(*CASHIER_ROLES)
def cashier_events() -> Response:
    """Stream payment events to cashier screens (Server-Sent Events)."""
    return sse_response(["payment.received"])


def _parse_quantity(raw: str) -> str:
    return raw.strip().replace(",", ".") or "1"


@bp.post("/billing/encounters/<encounter_id>/charges")
@roles_required("cashier")
def add_charge(encounter_id: str) -> BaseResponse:
    """Add a charge by hand, with the cashier's reason (audited)."""
    session = get_session()
    invoice = get_or_create_invoice(session, encounter_id, zone=_zone())
    ensure_patient_access(current_principal(), invoice.patient_id, "write")
    try:
        charge = add_manual_charge(
            session,
            patient_id=invoice.patient_id,
            encounter_id=encounter_id,
            item_code=request.form.get("item_code", ""),
            quantity=_parse_quantity(request.form.get("quantity", "1")),
            when=utcnow(),
            reason=request.form.get("reason", ""),
            cashier=_username(),
            zone=_zone(),
        )
    except VetinhError as error:
        _fail(error)
        audit.record("create", "ChargeItem", None, patient_id=invoice.patient_id, outcome="failure")
    else:
        audit.record(
            "create",
            "ChargeItem",
            charge.charge_item_id,
            patient_id=invoice.patient_id,
            detail=f"{charge.item_code} x{charge.quantity}: {charge.note}",
        )
        if charge.status == "flagged":
            flash(_("The charge was added but has no price yet."), "error")
        else:
            flash(_("Charge added."), "success")
    return redirect(url_for("billing.cashier_invoice", invoice_id=invoice.id))


@bp.post("/billing/charges/<int:charge_id>/void")
@roles_required("cashier")
def void_charge_view(charge_id: int) -> BaseResponse:
    """Void a charge with the cashier's reason (audited)."""
    session = get_session()
    charge = session.get(Charge, charge_id)
    if charge is None:
        raise ChargeNotFound()
    ensure_patient_access(current_principal(), charge.patient_id, "write")
    invoice = get_or_create_invoice(session, charge.encounter_id, zone=_zone())
    try:
        void_charge(session, charge_id, reason=request.form.get("reason", ""), cashier=_username())
    except VetinhError as error:
        _fail(error)
        audit.record(
            "void", "ChargeItem", charge.charge_item_id, patient_id=charge.patient_id, outcome="failure"
        )
    else:
        audit.record(
            "void",
            "ChargeItem",
            charge.charge_item_id,
            patient_id=charge.patient_id,
            detail=charge.void_reason,
        )
        flash(_("Charge voided."), "success")
    return redirect(url_for("billing.cashier_invoice", invoice_id=invoice.id))


@bp.post("/billing/invoices/<int:invoice_id>/payments")
@roles_required("cashier")
def desk_payment(invoice_id: int) -> BaseResponse:
    """Record cash or a card-terminal payment (audited)."""
    invoice = _invoice_for_staff(invoice_id, "write")
    try:
        payment = record_desk_payment(
            get_session(),
            invoice.id,
            channel=request.form.get("channel", ""),
            amount=request.form.get("amount", "").replace(".", "").replace(" ", ""),
            cashier=_username(),
            terminal_reference=request.form.get("terminal_reference"),
        )
    except VetinhError as error:
        _fail(error)
        audit.record("pay", "Invoice", str(invoice_id), patient_id=invoice.patient_id, outcome="failure")
    else:
        audit.record(
            "pay",
            "Invoice",
            str(invoice.id),
            patient_id=invoice.patient_id,
            detail=f"{payment.channel} {payment.amount}",
        )
        flash(_("Payment recorded."), "success")
    return redirect(url_for("billing.cashier_invoice", invoice_id=invoice_id))


@bp.post("/billing/invoices/<int:invoice_id>/refunds")
@roles_required("cashier")
def refund_view(invoice_id: int) -> BaseResponse:
    """Give money back on an invoice with the cashier's reason (audited)."""
    invoice = _invoice_for_staff(invoice_id, "write")
    try:
        given_back = refund(
            get_session(),
            invoice.id,
            amount=request.form.get("amount", "").replace(".", "").replace(" ", ""),
            channel=request.form.get("channel", ""),
            reason=request.form.get("reason", ""),
            cashier=_username(),
        )
    except VetinhError as error:
        _fail(error)
        audit.record("refund", "Invoice", str(invoice_id), patient_id=invoice.patient_id, outcome="failure")
    else:
        audit.record(
            "refund",
            "Invoice",
            str(invoice.id),
            patient_id=invoice.patient_id,
            detail=f"{given_back.channel} {given_back.amount}: {given_back.reason}",
        )
        flash(_("Refund recorded."), "success")
    return redirect(url_for("billing.cashier_invoice", invoice_id=invoice_id))


def _qr_response(invoice_id: int, kind: str) -> Response:
    invoice = _invoice_for_viewer(invoice_id)
    payload = vietqr_payload(get_session(), invoice, _bank_account())
    audit.record("read", "Invoice", str(invoice.id), patient_id=invoice.patient_id, detail="vietqr " + kind)
    if kind == "png":
        body: bytes | str = render_png(payload)
        mimetype = "image/png"
    else:
        body = render_svg(payload, title=transfer_note(invoice))
        mimetype = "image/svg+xml"
    response = Response(body, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/billing/invoices/<int:invoice_id>/vietqr.png")
@login_required
def invoice_qr_png(invoice_id: int) -> Response:
    """Draw the invoice's VietQR as PNG, for its cashier or its patient."""
    return _qr_response(invoice_id, "png")


@bp.get("/billing/invoices/<int:invoice_id>/vietqr.svg")
@login_required
def invoice_qr_svg(invoice_id: int) -> Response:
    """Draw the invoice's VietQR as SVG, for its cashier or its patient."""
    return _qr_response(invoice_id, "svg")


def _seller() -> Seller:
    """Name the hospital on a receipt: the configured seller, else the caller's (or this deployment's) site."""
    session = get_session()
    config = current_app.config
    principal = current_principal()
    site = session.get(Site, principal.site_id) if principal.site_id else None
    if site is None:
        home = current_app.extensions["vetinh.settings"].site_code
        site = session.scalars(select(Site).where(Site.code == home)).first()
    return Seller(
        name=str(config.get("VETINH_EINVOICE_SELLER_NAME") or (site.name if site else "")),
        tax_code=str(config.get("VETINH_EINVOICE_SELLER_TAX_CODE") or ""),
        address=str(config.get("VETINH_EINVOICE_SELLER_ADDRESS") or ""),
        facility_code=(site.facility_code or "") if site else "",
    )


@bp.get("/billing/invoices/<int:invoice_id>/receipt.pdf")
@login_required
def receipt_pdf(invoice_id: int) -> Response:
    """Download the receipt (biên lai thu tiền) of a paid invoice as a PDF (audited).

    The site's cashiers and managers, and the invoice's patient or a linked parent, may
    download it; anyone else gets 403 (audited). An invoice not paid in full gets 409.
    The receipt's number is given when the invoice is paid and never changes.
    """
    invoice = _invoice_for_viewer(invoice_id)
    session = get_session()
    if invoice.status != "paid":
        audit.record(
            "read",
            "Receipt",
            str(invoice.id),
            patient_id=invoice.patient_id,
            outcome="failure",
            detail="not paid",
        )
        raise ReceiptUnavailable()
    receipt = issue_receipt(session, invoice, zone=_zone())
    document = render_pdf(current_app, sheet_of(session, invoice, receipt, _seller(), zone=_zone()))
    audit.record("read", "Receipt", receipt.number, patient_id=invoice.patient_id, detail="pdf")
    response = Response(document, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="bien-lai-{receipt.number}.pdf"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/my/invoices")
@roles_required(PATIENT_ROLE)
def my_invoices() -> str:
    """List the patient's own invoices (and those of patients linked to the account)."""
    ids = linked_patient_ids(current_principal())
    invoices = (
        get_session()
        .scalars(select(Invoice).where(Invoice.patient_id.in_(ids)).order_by(Invoice.visit_date.desc()))
        .all()
        if ids
        else []
    )
    for patient_id in sorted({invoice.patient_id for invoice in invoices}):
        audit.record("read", "Invoice", None, patient_id=patient_id, detail="list")
    return render_template("billing/my_invoices.html", invoices=invoices)


@bp.get("/my/invoices/<int:invoice_id>")
@roles_required(PATIENT_ROLE)
def my_invoice(invoice_id: int) -> str:
    """Show the patient their invoice: what they pay, the VietQR to pay it, and the receipt once paid."""
    invoice = get_invoice(get_session(), invoice_id)
    ensure_patient_access(current_principal(), invoice.patient_id, "read")
    audit.record("read", "Invoice", str(invoice.id), patient_id=invoice.patient_id)
    return render_template("billing/invoice.html", **_invoice_context(invoice), staff=False)


@bp.get("/billing/review")
@roles_required(*CASHIER_ROLES)
def review() -> str:
    """List the bank transfers held for a cashier: partial, excess, unmatched or for a paid invoice."""
    return render_template("billing/review.html", items=review_queue(get_session()))


@bp.post("/billing/review/<int:notification_id>")
@roles_required("cashier")
def resolve(notification_id: int) -> BaseResponse:
    """Credit a held transfer to an invoice, or record that it was sent back (audited)."""
    session = get_session()
    try:
        notification = resolve_review(
            session,
            notification_id,
            action=request.form.get("action", ""),
            cashier=_username(),
            note=request.form.get("note", ""),
            invoice_reference=request.form.get("invoice_reference"),
        )
    except VetinhError as error:
        _fail(error)
        audit.record("resolve", "PaymentNotification", str(notification_id), outcome="failure")
    else:
        invoice = session.get(Invoice, notification.invoice_id) if notification.invoice_id else None
        audit.record(
            "resolve",
            "PaymentNotification",
            str(notification.id),
            patient_id=invoice.patient_id if invoice else None,
            detail=f"{notification.resolution}: {notification.resolution_note}",
        )
        flash(_("Transfer settled."), "success")
    return redirect(url_for("billing.review"))


def _patient_identity(patient_id: str) -> tuple[str, date | None]:
    summary = patient_summary(get_session(), patient_id)
    birth = summary.get("birth_date")
    return str(summary.get("full_name") or ""), date.fromisoformat(birth) if birth else None


def _optional_day(name: str) -> date | None:
    text = request.form.get(name, "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        message = N_("Write the date as YYYY-MM-DD.")
        raise ValidationFailed(message, fields={name: message}) from None


@bp.get("/billing/patients/<patient_id>/coverage")
@roles_required("cashier", "receptionist", "manager")
def coverage_page(patient_id: str) -> str:
    """Show the patient's BHYT card and the forms to enter or check one."""
    ensure_patient_access(current_principal(), patient_id, "read")
    session = get_session()
    today = datetime.now(_zone()).date()
    full_name, _birth = _patient_identity(patient_id)
    audit.record("read", "Coverage", None, patient_id=patient_id)
    return render_template(
        "billing/coverage.html",
        patient_id=patient_id,
        full_name=full_name,
        record=active_coverage(session, patient_id, today),
    )


@bp.post("/billing/patients/<patient_id>/coverage")
@roles_required("cashier", "receptionist")
def enter_card(patient_id: str) -> BaseResponse:
    """Register the BHYT card typed at the desk, checked by the rules of today (audited)."""
    ensure_patient_access(current_principal(), patient_id, "write")
    today = datetime.now(_zone()).date()
    try:
        entry = CardEntry(
            card_code=request.form.get("card_code", ""),
            valid_from=_optional_day("valid_from"),
            valid_to=_optional_day("valid_to"),
            registered_facility=request.form.get("registered_facility", "").strip() or None,
            five_years_from=_optional_day("five_years_from"),
        )
        record = register_card(get_session(), patient_id, entry, visit_date=today)
    except VetinhError as error:
        _fail(error)
        audit.record("create", "Coverage", None, patient_id=patient_id, outcome="failure", detail=error.code)
    else:
        audit.record("create", "Coverage", record.coverage_resource_id, patient_id=patient_id)
        flash(_("The card was saved."), "success")
    return redirect(url_for("billing.coverage_page", patient_id=patient_id))


@bp.post("/billing/patients/<patient_id>/coverage/check")
@roles_required("cashier", "receptionist")
def check_card(patient_id: str) -> BaseResponse:
    """Ask the insurance gateway about a card code or CCCD and keep the card it confirms (audited)."""
    ensure_patient_access(current_principal(), patient_id, "write")
    today = datetime.now(_zone()).date()
    full_name, birth_date = _patient_identity(patient_id)
    gateway = EligibilityGateway(current_app.config.get("VETINH_BHYT_GATEWAY_URL"))
    number = request.form.get("number", "")
    try:
        if birth_date is None:
            message = N_("The patient's date of birth is needed to check the card.")
            raise ValidationFailed(message, fields={"birth_date": message})
        result = gateway.check(number, full_name=full_name, birth_date=birth_date)
        record = register_card(
            get_session(),
            patient_id,
            entry_from_gateway(result),
            visit_date=today,
            gateway_code=result.result_code,
        )
    except VetinhError as error:
        _fail(error)
        code = error.extra.get("gateway_code", error.code)
        audit.record("check", "Coverage", None, patient_id=patient_id, outcome="failure", detail=str(code))
    else:
        audit.record("check", "Coverage", record.coverage_resource_id, patient_id=patient_id, detail="000")
        flash(_("The insurance gateway confirmed the card."), "success")
    return redirect(url_for("billing.coverage_page", patient_id=patient_id))


VIETQR_OUTPUT = {
    "type": "object",
    "required": ["invoice_id", "reference", "amount", "payload"],
    "properties": {
        "invoice_id": {"type": "integer"},
        "reference": {"type": "string", "example": "VP2026000123"},
        "amount": {"type": "string", "description": "What is still owed, in whole đồng", "example": "150000"},
        "note": {"type": "string", "example": "VIENPHI VP2026000123"},
        "payload": {"type": "string", "description": "The EMVCo/VietQR string to draw as a QR code"},
        "png": {"type": "string", "description": "URL of the QR as PNG"},
        "svg": {"type": "string", "description": "URL of the QR as SVG"},
    },
}
NOTIFICATION_INPUT = {
    "type": "object",
    "required": ["transaction_id", "amount"],
    "properties": {
        "transaction_id": {
            "type": "string",
            "description": "The bank's id of the transfer; a repeat is ignored",
        },
        "amount": {"type": "integer", "description": "Whole đồng, positive"},
        "description": {"type": "string", "example": "VIENPHI VP2026000123"},
        "account": {"type": "string"},
        "transacted_at": {"type": "string", "format": "date-time"},
    },
}
NOTIFICATION_OUTPUT = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["credited", "review", "duplicate"]},
        "transaction_id": {"type": "string"},
        "invoice": {"type": "string", "nullable": True},
        "review_reason": {"type": "string", "nullable": True},
    },
}


@bp.get("/api/v1/invoices/<int:invoice_id>/vietqr")
@login_required
@scope_required("Invoice", "read")
@api_doc(
    "Return the VietQR payload for what an invoice still owes (its cashier, or the patient themself)",
    tags=["billing"],
    responses={200: VIETQR_OUTPUT, 401: None, 403: None, 404: None, 409: None},
)
def invoice_vietqr(invoice_id: int) -> Response:
    """Return the dynamic VietQR payload for the invoice's balance, with its reference in the note."""
    invoice = _invoice_for_viewer(invoice_id)
    payload = vietqr_payload(get_session(), invoice, _bank_account())
    audit.record("read", "Invoice", str(invoice.id), patient_id=invoice.patient_id, detail="vietqr")
    return jsonify(
        invoice_id=invoice.id,
        reference=invoice.reference,
        amount=str(invoice.balance.quantize(Decimal(1))),
        note=transfer_note(invoice),
        payload=payload,
        png=url_for("billing.invoice_qr_png", invoice_id=invoice.id),
        svg=url_for("billing.invoice_qr_svg", invoice_id=invoice.id),
    )


@bp.post("/api/v1/payments/notifications")
@api_doc(
    "Receive the bank's notice of a transfer, signed with X-Signature: sha256=<HMAC-SHA256 of the body>",
    tags=["billing"],
    auth=False,
    request=NOTIFICATION_INPUT,
    responses={200: NOTIFICATION_OUTPUT, 401: None, 422: None},
)
def payment_notification() -> Response:
    """Authenticate a bank notice, keep it once, credit it or hold it for review."""
    session = get_session()
    begin_immediate(session)
    body = request.get_data(cache=False)
    try:
        verify_signature(
            body, request.headers.get(SIGNATURE_HEADER), current_app.config.get("VETINH_BANK_WEBHOOK_SECRET")
        )
    except BadSignature:
        audit.record("notify", "PaymentNotification", None, outcome="denied", detail="bad signature")
        raise
    transfer = read_transfer(body)
    outcome = receive_notification(session, transfer, body.decode("utf-8"))
    invoice = outcome.invoice
    audit.record(
        "notify",
        "PaymentNotification",
        transfer.transaction_id,
        patient_id=invoice.patient_id if invoice else None,
        detail=outcome.status,
    )
    return jsonify(
        status=outcome.status,
        transaction_id=transfer.transaction_id,
        invoice=invoice.reference if invoice else None,
        review_reason=outcome.notification.review_reason,
    )


CHANNEL_LABELS = {
    "vietqr": _l("VietQR transfer"),
    "card": _l("Card"),
    "cash": _l("Cash"),
    "transfer": _l("Bank transfer"),
}
STATUS_LABELS = {"open": _l("Open"), "paid": _l("Paid")}
REASON_LABELS = {
    "partial": _l("Less than owed"),
    "excess": _l("More than owed"),
    "unmatched": _l("No matching invoice"),
    "closed": _l("Invoice already paid"),
}


bp.add_app_template_filter(format_quantity, "quantity")


@bp.context_processor
def _labels() -> dict[str, Any]:
    return {"channel_labels": CHANNEL_LABELS, "status_labels": STATUS_LABELS, "reason_labels": REASON_LABELS}


add_nav_item("billing.daily_report", _l("Takings"), {"cashier", "manager"}, icon="chart", order=56)


def _report_day() -> date:
    text = request.args.get("day", "").strip()
    try:
        return date.fromisoformat(text) if text else datetime.now(_zone()).date()
    except ValueError:
        message = N_("Write the date as YYYY-MM-DD.")
        raise ValidationFailed(message, fields={"day": message}) from None


@bp.get("/billing/reports")
@roles_required(*CASHIER_ROLES)
def daily_report() -> str:
    """Show a day's takings by channel, the fund's and patients' shares, and what is outstanding."""
    day = _report_day()
    return render_template("billing/report.html", report=build_daily_report(get_session(), day, _zone()))


@bp.get("/billing/reports.csv")
@roles_required(*CASHIER_ROLES)
def daily_report_csv() -> Response:
    """Download a day's figures as CSV."""
    day = _report_day()
    return Response(
        report_csv(build_daily_report(get_session(), day, _zone())),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="takings-{day.isoformat()}.csv"'},
    )


def _signing_material() -> tuple[Any, Any] | None:
    return load_signing_material(
        current_app.config.get("VETINH_CLAIM_SIGNING_KEY"),
        current_app.config.get("VETINH_CLAIM_SIGNING_CERT"),
    )


@bp.get("/billing/claims.zip")
@roles_required(*CASHIER_ROLES)
def claims_zip() -> BaseResponse:
    """Download the insurance claims (XML 130, one envelope per visit) of a date range as a zip (audited).

    A range without claims sends the cashier back to their page with a message instead
    of an empty zip. Raises ValidationFailed for a bad date, a start after the end, or
    more than 31 days.
    """
    try:
        first_day = date.fromisoformat(request.args.get("from", ""))
        last_day = date.fromisoformat(request.args.get("to", ""))
    except ValueError:
        message = N_("Write the date as YYYY-MM-DD.")
        raise ValidationFailed(message, fields={"from": message, "to": message}) from None
    if last_day < first_day:
        message = N_("The start date must be on or before the end date.")
        raise ValidationFailed(message, fields={"from": message})
    if (last_day - first_day).days > 31:
        message = N_("Choose a range of at most 31 days.")
        raise ValidationFailed(message, fields={"to": message})
    session = get_session()
    facility = _facility()
    visits = claims_between(session, first_day, last_day, facility, zone=_zone())
    if not visits:
        audit.record("export", "Claim", None, detail=f"none from {first_day} to {last_day}")
        flash(
            _(
                "There are no insurance claims to export from %(first)s to %(last)s.",
                first=format_day(first_day),
                last=format_day(last_day),
            ),
            "error",
        )
        return redirect(url_for("billing.cashier_home"))
    signing = _signing_material()
    today = datetime.now(_zone()).date()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for visit in visits:
            document = claim_document(visit, today, _zone())
            if signing is not None:
                document = sign_envelope(document, *signing)
            archive.writestr(f"{visit.link_code}.xml", document)
            invoice = invoice_by_reference(session, visit.link_code)
            audit.record(
                "export", "Claim", visit.link_code, patient_id=invoice.patient_id if invoice else None
            )
    return Response(
        buffer.getvalue(),
        mimetype="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="claims-{first_day.isoformat()}-{last_day.isoformat()}.zip"'
        },
    )
