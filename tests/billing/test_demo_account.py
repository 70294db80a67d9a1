"""In development mode (``make run``) without a configured bank account, the demo still shows its QR codes."""

from __future__ import annotations

import pytest

from tests.conftest import login


@pytest.fixture
def settings_overrides(settings_overrides):
    return {**settings_overrides, "env": "development"}


def test_without_a_configured_account_development_shows_a_qr_marked_as_demonstration(
    app, client, make_user, invoice
):
    del app.config["VETINH_BANK_BIN"]
    del app.config["VETINH_BANK_ACCOUNT"]
    login(client, make_user("cashier", site="DIST").username)
    page = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert 'data-testid="vietqr"' in page
    assert 'data-testid="vietqr-demo-account"' in page
    assert client.get(f"/billing/invoices/{invoice.id}/vietqr.png").mimetype == "image/png"


def test_a_configured_account_is_never_marked_as_demonstration(app, client, make_user, invoice):
    login(client, make_user("cashier", site="DIST").username)
    page = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert 'data-testid="vietqr"' in page
    assert "vietqr-demo-account" not in page
