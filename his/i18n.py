"""Pick the language (Vietnamese by default) and format dates and money the Vietnamese way."""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from flask import Flask, current_app, request, session
from flask_babel import Babel, get_locale

from his.db import as_utc

LOCALES: tuple[str, ...] = ("vi", "en")
LOCALE_NAMES = {"vi": "Tiếng Việt", "en": "English"}

babel = Babel()


def select_locale() -> str:
    """Choose the locale: the user's explicit choice, else Vietnamese."""
    chosen = session.get("locale") if request else None
    if chosen in LOCALES:
        return str(chosen)
    if request and request.path.startswith(("/api/", "/fhir/")):
        match = request.accept_languages.best_match(LOCALES)
        if match:
            return match
    return str(current_app.extensions["vetinh.settings"].default_locale)


def local_zone() -> ZoneInfo:
    return ZoneInfo(current_app.extensions["vetinh.settings"].timezone)


def format_vnd(amount: Decimal | int | str | None) -> str:
    """Format an amount of dong as ``150.000 ₫`` (dot thousands, no decimals)."""
    if amount is None:
        return ""
    value = Decimal(str(amount)).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    digits = f"{abs(int(value)):,}".replace(",", ".")
    return f"{sign}{digits}\u00a0₫"


def format_day(value: date | datetime | None) -> str:
    """Format a date as ``23/11/2026`` (a datetime, naive meaning UTC, in the hospital's zone)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = as_utc(value).astimezone(local_zone()).date()
    return value.strftime("%d/%m/%Y")


def format_moment(value: datetime | None) -> str:
    """Format a moment as ``08:30 23/11/2026`` in the hospital's time zone."""
    if value is None:
        return ""
    return as_utc(value).astimezone(local_zone()).strftime("%H:%M %d/%m/%Y")


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "vi")
    app.config.setdefault("BABEL_DEFAULT_TIMEZONE", "Asia/Ho_Chi_Minh")
    babel.init_app(app, locale_selector=select_locale)
    app.jinja_env.filters["vnd"] = format_vnd
    app.jinja_env.filters["day"] = format_day
    app.jinja_env.filters["moment"] = format_moment

    @app.context_processor
    def _language() -> dict[str, object]:
        return {"current_locale": str(get_locale()), "locale_names": LOCALE_NAMES}
