"""HTTP entry points of the billing context: the public price list, its CSV download and import."""

from __future__ import annotations

from datetime import date, datetime

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response as BaseResponse

from billing.models import PRICE_KINDS
from billing.services import (
    PriceImportFailed,
    all_prices_on,
    export_prices_csv,
    import_prices,
    read_price_csv,
    search_prices,
)
from his import audit
from his.db import get_session
from his.i18n import local_zone
from his.navigation import add_nav_item
from his.security import current_principal, roles_required

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
    "visit": _l("Visits"),
    "service": _l("Services"),
    "drug": _l("Drugs"),
    "supply": _l("Supplies"),
    "bed": _l("Beds"),
    "other": _l("Other"),
}

add_nav_item("billing.prices", _l("Price list"), ALL_ROLES, icon="tag", order=60)


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
    audit.record("import", "PriceList", detail=f"created={outcome.created} updated={outcome.updated}")
    flash(
        _(
            "Price list imported: %(created)d new, %(updated)d updated.",
            created=outcome.created,
            updated=outcome.updated,
        ),
        "success",
    )
    return redirect(url_for("billing.prices"))
