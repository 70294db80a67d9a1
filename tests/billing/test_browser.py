"""The payment story in headless Chromium: the cashier shows the QR, the bank pays, both screens follow.

The patient then downloads the receipt PDF from their own page, and its text is read back with pypdf.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect
from pypdf import PdfReader

from billing.payments import sign
from billing.services import DEMO_PRICE_LIST, import_prices, read_price_csv
from his.db import get_database
from his.models import User
from tests.browser import chromium
from tests.conftest import TEST_PASSWORD

from .conftest import SECRET, URL, notice_body

pytestmark = pytest.mark.e2e


def _login(browser, base: str, username: str):
    page = browser.new_context().new_page()
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def test_a_transfer_marks_the_invoice_paid_on_the_cashiers_screen_without_a_reload(
    app, live_server, make_user, invoice, patient
):
    make_user("cashier", username="thungan")
    owner = make_user("patient", username="benhnhan")
    with get_database(app).session_scope() as session:
        session.get(User, owner.id).patient_id = patient
    base = live_server.url
    with chromium() as browser:
        desk = _login(browser, base, "thungan")
        desk.goto(f"{base}/billing/invoices/{invoice.id}")
        qr = desk.get_by_test_id("vietqr").locator("img")
        expect(qr).to_be_visible()
        assert desk.evaluate("(img) => img.naturalWidth > 0", qr.element_handle())
        expect(desk.get_by_test_id("balance")).to_contain_text("192.589")
        desk.evaluate("window.notReloaded = true")

        body = notice_body("FT100", 192589, f"VIENPHI {invoice.reference}")
        answer = requests.post(
            base + URL,
            data=body,
            headers={"Content-Type": "application/json", "X-Signature": sign(body, SECRET)},
            timeout=30,
        )
        assert answer.json()["status"] == "credited"

        expect(desk.get_by_test_id("paid")).to_be_visible(timeout=5000)
        expect(desk.get_by_test_id("vietqr")).to_have_count(0)
        expect(desk.get_by_test_id("receipt-pdf")).to_be_visible()
        assert desk.evaluate("window.notReloaded") is True

        me = _login(browser, base, "benhnhan")
        me.goto(f"{base}/my/invoices/{invoice.id}")
        expect(me.get_by_test_id("receipt")).to_contain_text("192.589")
        expect(me.get_by_test_id("paid")).to_be_visible()
        link = me.get_by_test_id("receipt-pdf")
        expect(link).to_contain_text("BL")
        with me.expect_download() as download:
            link.click()
        filename = download.value.suggested_filename
        pdf = Path(download.value.path()).read_bytes()

    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert "BIÊN LAI THU TIỀN" in text
    assert "Họ tên người bệnh: Nguyễn Văn An" in text
    assert "Người bệnh phải trả: 192.589 ₫" in text
    assert "Bằng chữ: Một trăm chín mươi hai nghìn năm trăm tám mươi chín đồng" in text
    assert "FT100" in text
    number = text.split("Số: ")[1].split()[0]
    assert number.startswith("BL")
    assert filename == f"bien-lai-{number}.pdf"


def test_the_public_price_list_is_readable_on_a_phone(app, live_server, tmp_path):
    with get_database(app).session_scope() as session:
        import_prices(session, read_price_csv(DEMO_PRICE_LIST.read_bytes()))
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 390, "height": 844}, locale="vi-VN").new_page()
        page.goto(live_server.url + "/prices?q=sieu+am")
        row = page.get_by_test_id("price-row").first
        expect(row).to_contain_text("Siêu âm ổ bụng")
        page.screenshot(path=str(tmp_path / "prices-390.png"), full_page=True)
        # Nothing scrolls sideways: the list fits the screen and both prices are in view.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        wrap = page.locator(".table-wrap").bounding_box()
        table = page.get_by_test_id("price-table").bounding_box()
        assert table["width"] <= wrap["width"]
        for test_id, amount in (("price-amount", "250.000"), ("price-insurance", "43.900")):
            cell = row.get_by_test_id(test_id)
            expect(cell).to_contain_text(amount)
            box = cell.bounding_box()
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 390
        # The name comes first, above its prices.
        assert (
            row.locator(".price-name").bounding_box()["y"]
            < row.get_by_test_id("price-amount").bounding_box()["y"]
        )


def test_the_patients_invoice_with_its_qr_fits_a_phone_screen(app, live_server, make_user, invoice, patient):
    owner = make_user("patient", username="benhnhan")
    with get_database(app).session_scope() as session:
        session.get(User, owner.id).patient_id = patient
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
        page.goto(live_server.url + "/login")
        page.fill("input[name=username]", "benhnhan")
        page.fill("input[name=password]", TEST_PASSWORD)
        page.click("form.form button[type=submit]")
        page.wait_for_url(live_server.url + "/")
        page.goto(f"{live_server.url}/my/invoices/{invoice.id}")
        expect(page.get_by_test_id("vietqr").locator("img")).to_be_visible()
        # The long VietQR payload wraps instead of widening the page.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
