"""Serve the platform's pages: home per role, login, logout, registration, language, health, audit."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select, text
from werkzeug.wrappers import Response as BaseResponse

from his import audit
from his.accounts import authenticate, clear_failed_logins, record_failed_login
from his.db import begin_immediate, get_database, get_session
from his.errors import NotFound, TooManyRequests, Unauthorized, ValidationFailed
from his.i18n import LOCALES, local_zone
from his.models import AuditRecord, Site, User
from his.navigation import add_nav_item, nav_items_for
from his.patients import PatientDetails, register_patient_account
from his.security import current_principal, login_required, roles_required

bp = Blueprint(
    "his", __name__, template_folder="templates", static_folder="static/his", static_url_path="/static/his"
)

ROLE_LABELS = {
    "patient": _l("Patient"),
    "receptionist": _l("Receptionist"),
    "nurse": _l("Nurse"),
    "doctor": _l("Doctor"),
    "pharmacist": _l("Pharmacist"),
    "pathologist": _l("Pathologist"),
    "cashier": _l("Cashier"),
    "manager": _l("Manager"),
    "admin": _l("Administrator"),
}

add_nav_item("his.home", _l("Home"), set(ROLE_LABELS), icon="home", order=0)
add_nav_item("his.audit_log", _l("Audit log"), {"admin"}, icon="shield", order=90)
add_nav_item("api.docs", _l("API"), {"admin", "manager"}, icon="code", order=95)


@bp.app_context_processor
def _layout_context() -> dict[str, Any]:
    principal = current_principal()
    return {
        "principal": principal,
        "nav_items": nav_items_for(principal.role),
        "role_labels": ROLE_LABELS,
    }


@bp.get("/")
def home() -> str | BaseResponse:
    """Show the signed-in user's home page, or the public welcome page."""
    principal = current_principal()
    if not principal.is_authenticated:
        return render_template("his/welcome.html")
    site = get_session().get(Site, principal.site_id) if principal.site_id else None
    today = datetime.now(local_zone()).date()
    return render_template(
        f"his/home/{principal.role}.html" if principal.role else "his/home/staff.html",
        site=site,
        today=today,
    )


def _safe_next(target: str | None) -> str:
    """Accept only a local path as the place to go after login."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("his.home")


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | BaseResponse | tuple[str, int]:
    """Sign in with a username and password."""
    if request.method == "GET":
        if current_principal().is_authenticated:
            return redirect(url_for("his.home"))
        return render_template("his/login.html", next=request.args.get("next", ""))
    settings = current_app.extensions["vetinh.settings"]
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    address = request.remote_addr
    db = get_session()
    try:
        user = authenticate(
            db,
            username,
            password,
            address=address,
            limit=settings.login_max_failures,
            window=settings.login_window_seconds,
        )
    except (Unauthorized, TooManyRequests) as exc:
        if isinstance(exc, Unauthorized):
            # Kept in its own transaction: the request's own work is rolled back on error.
            with get_database().session_scope() as counter:
                record_failed_login(counter, username, address)
            message = _("Wrong username or password.")
        else:
            message = _("Too many failed logins. Wait a few minutes and try again.")
        audit.record("login", "User", None, outcome="failure", claimed_username=username[:80] or None)
        return (
            render_template(
                "his/login.html", error=message, username=username, next=request.form.get("next", "")
            ),
            exc.status,
        )
    user_id, user_locale = user.id, user.locale
    # End the read snapshot before writing: SQLite refuses to turn a snapshot that another
    # login has made stale into a write ("database is locked"), so the write gets its own
    # transaction that takes the lock first.
    db.rollback()
    with get_database().session_scope() as writer:
        begin_immediate(writer)
        clear_failed_logins(writer, username)
    keep_locale = session.get("locale")
    session.clear()
    session.rotate = True  # type: ignore[attr-defined]
    session["user_id"] = user_id
    if keep_locale:
        session["locale"] = keep_locale
    elif user_locale in LOCALES:
        session["locale"] = user_locale
    audit.record("login", "User", str(user_id))
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> BaseResponse:
    """End the session everywhere (the server-side row is deleted)."""
    principal = current_principal()
    if principal.is_authenticated:
        audit.record("logout", "User", str(principal.user_id))
    keep_locale = session.get("locale")
    session.clear()
    response = redirect(url_for("his.login"))
    if keep_locale:
        # A fresh anonymous session keeps the chosen language on the login page.
        session["locale"] = keep_locale
    return response


def _parse_date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


@bp.route("/register", methods=["GET", "POST"])
def register() -> str | BaseResponse | tuple[str, int]:
    """Let a patient create their own account."""
    if request.method == "GET":
        return render_template("his/register.html", form={}, errors={})
    form = request.form
    birth_raw = form.get("birth_date", "").strip()
    birth_date = _parse_date(birth_raw)
    details = PatientDetails(
        full_name=form.get("full_name", ""),
        birth_date=birth_date,
        sex=form.get("sex", ""),
        phone=form.get("phone", "").strip() or None,
        email=form.get("email", "").strip() or None,
        national_id=form.get("national_id", "").strip() or None,
    )
    db = get_session()
    settings = current_app.extensions["vetinh.settings"]
    home_site = db.scalar(select(Site).where(Site.code == settings.site_code))
    try:
        if birth_raw and birth_date is None:
            raise ValidationFailed(fields={"birth_date": "Use the format dd/mm/yyyy."})
        user = register_patient_account(
            db,
            details,
            username=form.get("username", ""),
            password=form.get("password", ""),
            home_site_id=home_site.id if home_site else None,
        )
    except ValidationFailed as exc:
        return render_template("his/register.html", form=form, errors=exc.fields), exc.status
    except Exception as exc:
        from his.errors import Conflict

        if isinstance(exc, Conflict):
            return render_template("his/register.html", form=form, errors=exc.fields), 409
        raise
    audit.record("create", "Patient", user.patient_id, patient_id=user.patient_id)
    session.clear()
    session.rotate = True  # type: ignore[attr-defined]
    session["user_id"] = user.id
    return redirect(url_for("his.home"))


@bp.post("/language")
def set_language() -> BaseResponse:
    """Switch the interface language and go back to the page the user was on."""
    chosen = request.form.get("locale", "")
    if chosen in LOCALES:
        session["locale"] = chosen
        principal = current_principal()
        if principal.user_id is not None:
            user = get_session().get(User, principal.user_id)
            if user is not None:
                user.locale = chosen
    return redirect(_safe_next(request.form.get("next")))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Report whether the app and its database answer."""
    try:
        get_session().execute(text("SELECT 1"))
        return jsonify(status="ok", database="ok"), 200
    except Exception:
        return jsonify(status="error", database="unavailable"), 503


# Front-end libraries installed from the npm registry (package.json) that pages may load.
VENDOR_PACKAGES = frozenset({"swagger-ui-dist", "htmx.org", "openseadragon", "chart.js"})


@bp.get("/vendor/<path:filename>")
def vendor(filename: str) -> Response:
    """Serve a file of an allowed front-end package from node_modules."""
    package = filename.split("/", 1)[0]
    if package not in VENDOR_PACKAGES:
        raise NotFound()
    response = send_from_directory(
        current_app.extensions["vetinh.settings"].vendor_dir, filename, max_age=86400
    )
    return response


AUDIT_PAGE_SIZE = 50


@bp.get("/admin/audit")
@roles_required("admin")
def audit_log() -> str:
    """List audit records, newest first, filtered by user, patient, action, outcome and day."""
    audit.flush()
    args = request.args
    query = select(AuditRecord)
    filters = {
        "username": AuditRecord.username,
        "patient_id": AuditRecord.patient_id,
        "action": AuditRecord.action,
        "outcome": AuditRecord.outcome,
        "entity_type": AuditRecord.entity_type,
    }
    for name, column in filters.items():
        value = args.get(name, "").strip()
        if value:
            query = query.where(column == value)
    day = _parse_date(args.get("day", ""))
    if day is not None:
        start = datetime.combine(day, datetime.min.time(), tzinfo=local_zone())
        query = query.where(
            AuditRecord.recorded_at >= start, AuditRecord.recorded_at < start + timedelta(days=1)
        )
    page = max(1, args.get("page", 1, type=int) or 1)
    db = get_session()
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(
        query.order_by(AuditRecord.recorded_at.desc(), AuditRecord.id.desc())
        .limit(AUDIT_PAGE_SIZE)
        .offset((page - 1) * AUDIT_PAGE_SIZE)
    ).all()
    return render_template(
        "his/audit.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // AUDIT_PAGE_SIZE)),
        filters={k: args.get(k, "") for k in [*filters, "day"]},
    )


@bp.get("/account")
@login_required
def account() -> str:
    """Show the signed-in user's own account."""
    principal = current_principal()
    user = get_session().get(User, principal.user_id) if principal.user_id else None
    return render_template("his/account.html", user=user)
