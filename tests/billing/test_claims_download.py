"""The cashier's claims download says so when a range has nothing to export, or runs backwards."""

from __future__ import annotations

from tests.conftest import login


def _as_manager(client, make_user) -> None:
    login(client, make_user("manager", username="quanly").username)
    with client.session_transaction() as browser_session:
        browser_session["locale"] = "en"


def test_a_range_without_claims_sends_the_cashier_back_with_a_message_not_an_empty_zip(
    app, client, make_user
):
    _as_manager(client, make_user)
    response = client.get("/billing/claims.zip?from=2025-09-01&to=2025-09-30")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/billing")
    assert response.mimetype != "application/zip"
    page = client.get("/billing").get_data(as_text=True)
    assert "There are no insurance claims to export from 01/09/2025 to 30/09/2025." in page


def test_a_range_that_ends_before_it_starts_is_refused_with_that_reason(app, client, make_user):
    _as_manager(client, make_user)
    response = client.get("/billing/claims.zip?from=2025-09-30&to=2025-09-01")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "The start date must be on or before the end date." in html
    assert "at most 31 days" not in html
