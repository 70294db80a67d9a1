"""Vietnamese by default, English on request, every string translated, Vietnamese formats."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from babel.messages.pofile import read_po

from his.i18n import format_day, format_moment, format_vnd
from tests.conftest import csrf_token

ROOT = Path(__file__).resolve().parents[2]


def test_pages_are_vietnamese_by_default_and_switch_to_english(client):
    assert "Đăng nhập" in client.get("/login").get_data(as_text=True)
    token = csrf_token(client)
    response = client.post("/language", data={"locale": "en", "next": "/login", "csrf_token": token})
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/login")
    page = client.get("/login").get_data(as_text=True)
    assert "Log in" in page
    assert "Đăng nhập" not in page
    assert '<html lang="en">' in page


def test_the_language_switch_never_redirects_off_site(client):
    token = csrf_token(client)
    response = client.post(
        "/language", data={"locale": "en", "next": "//evil.example/x", "csrf_token": token}
    )
    assert response.headers["Location"] == "/"


def test_money_and_dates_are_formatted_for_vietnam(app):
    with app.app_context():
        assert format_vnd(Decimal("150000")) == "150.000\u00a0₫"
        assert format_vnd(1234567) == "1.234.567\u00a0₫"
        assert format_vnd(Decimal("0")) == "0\u00a0₫"
        assert format_day(date(2026, 11, 23)) == "23/11/2026"
        # 17:30 UTC is 00:30 the next day in Hanoi.
        assert format_day(datetime(2026, 11, 22, 17, 30, tzinfo=UTC)) == "23/11/2026"
        assert format_moment(datetime(2026, 11, 23, 1, 30, tzinfo=UTC)) == "08:30 23/11/2026"


def test_every_user_facing_string_has_a_vietnamese_translation(tmp_path):
    """Extract the strings from the code now, so a string added without translation fails."""
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [
            sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg",
            "-k", "_l", "-k", "lazy_gettext", "-k", "N_", "-o", str(pot), "--no-location",
            "his", "fhir", "booking", "billing", "telehealth", "pathology",
        ],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with pot.open("rb") as f:
        extracted = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(f) if m.id}
    with (ROOT / "his/translations/vi/LC_MESSAGES/messages.po").open("rb") as f:
        catalog = read_po(f, locale="vi")
    translated = {
        (m.id if isinstance(m.id, str) else m.id[0])
        for m in catalog
        if m.id and m.string and (isinstance(m.string, str) or all(m.string)) and not m.fuzzy
    }
    missing = sorted(extracted - translated)
    assert not missing, f"strings without a Vietnamese translation: {missing}"
