"""Serve the platform's pages: home per role, login, logout, registration, language, health, audit."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
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
from his.accounts import (
    NewUser,
    authenticate,
    clear_failed_logins,
    create_user,
    new_user_errors,
    record_failed_login,
    reset_password,
    set_active,
)
from his.db import begin_immediate, get_database, get_session
from his.errors import N_, Conflict, NotFound, TooManyRequests, Unauthorized, ValidationFailed
from his.i18n import LOCALES, local_zone
from his.models import AuditRecord, Site, User
from his.navigation import add_nav_item, nav_items_for
from his.patients import PatientDetails, register_patient_account, validate_details
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
add_nav_item("his.users", _l("Users"), {"admin"}, icon="users", order=80)
add_nav_item("his.sites", _l("Sites"), {"admin"}, icon="building", order=81)
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
    username, password = form.get("username", ""), form.get("password", "")
    # Every field is checked before anything is written, so one submit shows every problem.
    errors = new_user_errors(
        db,
        NewUser(
            username=username,
            password=password,
            full_name=details.full_name,
            role="patient",
            email=details.email,
            phone=details.phone,
        ),
    )
    try:
        validate_details(details)
    except ValidationFailed as exc:
        errors.update(exc.fields)
    if birth_raw and birth_date is None:
        errors["birth_date"] = N_("Use the format dd/mm/yyyy.")
    try:
        if errors:
            raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
        user = register_patient_account(
            db,
            details,
            username=username,
            password=password,
            home_site_id=home_site.id if home_site else None,
        )
    except ValidationFailed as exc:
        return render_template("his/register.html", form=form, errors=exc.fields), exc.status
    except Conflict as exc:
        return render_template("his/register.html", form=form, errors=exc.fields), exc.status
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

# What each audited action means, for the audit page; the raw code stays visible next to it.
AUDIT_ACTION_LABELS = {
    "access": _l("Opened a page"),
    "amend": _l("Amended"),
    "cancel": _l("Cancelled"),
    "check": _l("Checked"),
    "check-in": _l("Checked in"),
    "create": _l("Created"),
    "delete": _l("Deleted"),
    "dispense": _l("Dispensed"),
    "end": _l("Ended"),
    "import": _l("Imported"),
    "invite": _l("Invited"),
    "join": _l("Joined"),
    "leave": _l("Left"),
    "login": _l("Logged in"),
    "logout": _l("Logged out"),
    "notify": _l("Notified"),
    "pay": _l("Paid"),
    "print": _l("Printed"),
    "read": _l("Viewed"),
    "record": _l("Started recording"),
    "record-stop": _l("Stopped recording"),
    "refund": _l("Refunded"),
    "resolve": _l("Resolved"),
    "search": _l("Searched"),
    "sign": _l("Signed"),
    "token": _l("Issued a token"),
    "update": _l("Changed"),
    "verify": _l("Verified"),
    "write": _l("Wrote"),
}

# Names of the record types audit records most often point at.
AUDIT_ENTITY_LABELS = {
    "Annotation": _l("Slide annotation"),
    "Appointment": _l("Appointment"),
    "ChargeItem": _l("Charge"),
    "Client": _l("API client"),
    "Composition": _l("Medical record"),
    "Coverage": _l("Health-insurance card"),
    "DiagnosticReport": _l("Diagnostic report"),
    "DocumentReference": _l("Document"),
    "Encounter": _l("Encounter"),
    "Invoice": _l("Invoice"),
    "Page": _l("Page"),
    "PathologyCase": _l("Pathology case"),
    "Patient": _l("Patient"),
    "PaymentNotification": _l("Payment notification"),
    "Prescription": _l("Prescription"),
    "PriceList": _l("Price list"),
    "Provenance": _l("Signature"),
    "QuestionnaireResponse": _l("Survey answer"),
    "Receipt": _l("Receipt"),
    "Report": _l("Statistics report"),
    "ServiceRequest": _l("Request"),
    "Slide": _l("Slide"),
    "SlideLabel": _l("Slide label"),
    "TelehealthRecording": _l("Call recording"),
    "TelehealthRoom": _l("Video call"),
    "User": _l("User"),
    "Worklist": _l("Worklist"),
}

AUDIT_OUTCOME_LABELS = {"success": _l("Success"), "denied": _l("Denied"), "failure": _l("Failure")}


def _patient_names(patient_ids: list[str]) -> dict[str, str]:
    """Read the names of these patients from the FHIR store in one search."""
    if not patient_ids:
        return {}
    from fhir import services as store

    found = store.search(
        get_session(),
        "Patient",
        [("_id", ",".join(patient_ids)), ("_count", str(len(patient_ids)))],
    )
    names: dict[str, str] = {}
    for match in found.matches:
        name = (match.resource.get("name") or [{}])[0]
        text_name = name.get("text") or " ".join([name.get("family", ""), *name.get("given", [])]).strip()
        if text_name:
            names[match.id] = text_name
    return names


@bp.get("/admin/audit")
@roles_required("admin")
def audit_log() -> str:
    """List audit records, newest first, filtered by user, patient, action, outcome and day.

    The patients' names on the page are read in one search, and that read is itself audited
    once per page view.
    """
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
    patient_ids = list(dict.fromkeys(row.patient_id for row in rows if row.patient_id))
    patient_names = _patient_names(patient_ids)
    if patient_ids:
        audit.record("read", "Patient", None, detail="names on the audit log: " + " ".join(patient_ids))
    return render_template(
        "his/audit.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // AUDIT_PAGE_SIZE)),
        filters={k: args.get(k, "") for k in [*filters, "day"]},
        patient_names=patient_names,
        action_labels=AUDIT_ACTION_LABELS,
        entity_labels=AUDIT_ENTITY_LABELS,
        outcome_labels=AUDIT_OUTCOME_LABELS,
    )


@bp.get("/account")
@login_required
def account() -> str:
    """Show the signed-in user's own account."""
    principal = current_principal()
    user = get_session().get(User, principal.user_id) if principal.user_id else None
    return render_template("his/account.html", user=user)


USERS_PAGE_SIZE = 50


def _admin_user(user_id: int) -> User:
    """Return the user an admin is working on; raise NotFound when there is none."""
    user = get_session().get(User, user_id)
    if user is None:
        raise NotFound(N_("There is no such user."), fields={"user": str(user_id)})
    return user


@bp.get("/admin/users")
@roles_required("admin")
def users() -> str:
    """List accounts, filtered by role, site, active state and a name or username."""
    args = request.args
    db = get_session()
    query = select(User)
    role = args.get("role", "").strip()
    if role:
        query = query.where(User.role == role)
    site_code = args.get("site", "").strip()
    if site_code:
        query = query.join(Site, User.site_id == Site.id).where(Site.code == site_code)
    state = args.get("active", "").strip()
    if state in {"1", "0"}:
        query = query.where(User.active.is_(state == "1"))
    needle = args.get("q", "").strip()
    if needle:
        pattern = f"%{needle.lower()}%"
        query = query.where(
            func.lower(User.username).like(pattern) | func.lower(User.full_name).like(pattern)
        )
    page = max(1, args.get("page", 1, type=int) or 1)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(
        query.order_by(User.username).limit(USERS_PAGE_SIZE).offset((page - 1) * USERS_PAGE_SIZE)
    ).all()
    return render_template(
        "his/users.html",
        users=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // USERS_PAGE_SIZE)),
        filters={"role": role, "site": site_code, "active": state, "q": needle},
        sites=db.scalars(select(Site).order_by(Site.code)).all(),
    )


STAFF_ROLE_CHOICES = [role for role in ROLE_LABELS if role != "patient"]


@bp.route("/admin/users/new", methods=["GET", "POST"])
@roles_required("admin")
def user_create() -> str | BaseResponse | tuple[str, int]:
    """Create a staff account with an initial password."""
    db = get_session()
    sites = db.scalars(select(Site).order_by(Site.code)).all()
    if request.method == "GET":
        return render_template("his/user_new.html", form={}, errors={}, sites=sites, roles=STAFF_ROLE_CHOICES)
    form = request.form
    role = form.get("role", "")
    new = NewUser(
        username=form.get("username", ""),
        password=form.get("password", ""),
        full_name=form.get("full_name", ""),
        role=role,
        site_code=form.get("site", "").strip() or None,
    )
    errors = new_user_errors(db, new)
    if role not in STAFF_ROLE_CHOICES:
        # Patients register themselves (or at the desk) so that their FHIR Patient exists.
        errors["role"] = N_("Choose a staff role.")
    try:
        if errors:
            raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
        user = create_user(db, new)
    except (ValidationFailed, Conflict) as exc:
        audit.record("create", "User", None, outcome="failure", detail=", ".join(sorted(exc.fields)))
        page = render_template(
            "his/user_new.html", form=form, errors=exc.fields, sites=sites, roles=STAFF_ROLE_CHOICES
        )
        return page, exc.status
    audit.record("create", "User", str(user.id), detail=f"{user.username} ({user.role})")
    flash(_("The account %(username)s was created.", username=user.username), "success")
    return redirect(url_for("his.users", q=user.username))


@bp.post("/admin/users/<int:user_id>/active")
@roles_required("admin")
def user_set_active(user_id: int) -> BaseResponse:
    """Deactivate an account (its sessions and tokens end) or reactivate it."""
    user = _admin_user(user_id)
    active = request.form.get("active") == "1"
    if not active and user.id == current_principal().user_id:
        raise Conflict(N_("You cannot deactivate your own account."), fields={"active": "self"})
    set_active(get_session(), user, active)
    audit.record("update", "User", str(user.id), detail="reactivated" if active else "deactivated")
    if active:
        flash(_("%(username)s can log in again.", username=user.username), "success")
    else:
        flash(_("%(username)s can no longer log in.", username=user.username), "success")
    return redirect(_safe_next(request.form.get("next") or url_for("his.users")))


@bp.route("/admin/users/<int:user_id>/password", methods=["GET", "POST"])
@roles_required("admin")
def user_password(user_id: int) -> str | BaseResponse | tuple[str, int]:
    """Set a new password for a user; their other sessions and tokens end."""
    user = _admin_user(user_id)
    if request.method == "GET":
        return render_template("his/user_password.html", user=user, errors={})
    try:
        reset_password(get_session(), user, request.form.get("password", ""), keep_session_id=_session_id())
    except ValidationFailed as exc:
        audit.record("update", "User", str(user.id), outcome="failure", detail="password reset refused")
        return render_template("his/user_password.html", user=user, errors=exc.fields), exc.status
    audit.record("update", "User", str(user.id), detail="password reset")
    flash(_("The password of %(username)s was changed.", username=user.username), "success")
    return redirect(url_for("his.users", q=user.username))


def _session_id() -> str | None:
    """Return the id of the browser session making this request, if any."""
    return getattr(session, "sid", None)


@bp.get("/admin/sites")
@roles_required("admin")
def sites() -> str:
    """List the hospitals (read-only)."""
    db = get_session()
    counts = dict(
        db.execute(
            select(User.site_id, func.count()).where(User.site_id.is_not(None)).group_by(User.site_id)
        ).all()
    )
    return render_template(
        "his/sites.html",
        sites=db.scalars(select(Site).order_by(Site.kind.desc(), Site.code)).all(),
        counts=counts,
    )


@bp.get("/favicon.ico")
def favicon() -> BaseResponse:
    """Answer browsers that ask for the classic icon with the SVG one."""
    return redirect(url_for("his.static", filename="favicon.svg"), code=301)
