"""The booking story in headless Chromium: book, check in, call, and the board shows it live."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.booking.helpers import local_today
from tests.browser import chromium
from tests.conftest import TEST_PASSWORD

pytestmark = pytest.mark.e2e


def _login(browser, base: str, username: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def test_book_check_in_call_and_the_board_shows_the_number(
    live_server, app, clinic, make_session, patient_user, make_user
):
    session_id = make_session(clinic.id)
    patient = patient_user()
    receptionist = make_user("receptionist")
    doctor = make_user("doctor")
    base = live_server.url
    with chromium() as browser:
        me = _login(browser, base, patient.username)
        me.goto(f"{base}/booking/book?clinic={clinic.id}&date={local_today().isoformat()}")
        me.get_by_test_id("book-morning").click()
        expect(me.get_by_test_id("queue-number")).to_have_text("1")
        expect(me.get_by_test_id("qr").locator("svg")).to_be_visible()
        code = me.get_by_test_id("checkin-code").inner_text()

        board = browser.new_context().new_page()
        board.goto(f"{base}/booking/board/DIST")
        serving = board.get_by_test_id(f"board-serving-{session_id}")
        expect(serving).to_have_text("–")
        board.evaluate("window.notReloaded = true")

        desk = _login(browser, base, receptionist.username)
        desk.goto(f"{base}/booking/desk")
        desk.get_by_test_id("checkin-code").fill(code)
        desk.get_by_test_id("checkin-submit").click()
        expect(desk.locator(".alert-success")).to_contain_text("1")

        console = _login(browser, base, doctor.username)
        console.goto(f"{base}/booking/console/{session_id}")
        expect(console.get_by_test_id("waiting")).to_have_text("1")
        console.get_by_test_id("console-next").click()
        expect(console.get_by_test_id("serving")).to_have_text("1")

        expect(serving).to_have_text("1", timeout=2000)
        assert board.evaluate("window.notReloaded") is True
        expect(board.get_by_test_id("last-called")).to_contain_text("1")
        # The patient's page follows without a reload too.
        expect(me.get_by_test_id("now-serving")).to_have_text("1", timeout=2000)
