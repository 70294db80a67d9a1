"""A doctor uses the real pages in headless Chromium."""

from __future__ import annotations

import pytest

from tests.browser import chromium
from tests.conftest import TEST_PASSWORD

pytestmark = pytest.mark.e2e


def test_doctor_logs_in_sees_vietnamese_home_switches_to_english_and_logs_out(live_server, make_user):
    make_user("doctor", username="doctor", full_name="Lê Văn Minh")
    with chromium() as browser:
        page = browser.new_page()
        page.goto(live_server.url + "/login")
        assert page.locator("h1").inner_text() == "Đăng nhập"
        page.fill("input[name=username]", "doctor")
        page.fill("input[name=password]", TEST_PASSWORD)
        page.click("form.form button[type=submit]")
        heading = page.get_by_test_id("home-heading")
        assert heading.inner_text() == "Bàn làm việc của bác sĩ"
        assert page.locator("html").get_attribute("lang") == "vi"
        assert "Lê Văn Minh" in page.locator(".whoami").inner_text()

        page.click(".lang-switch button[value=en]")
        assert page.get_by_test_id("home-heading").inner_text() == "Doctor's workspace"
        assert page.locator("html").get_attribute("lang") == "en"
        assert page.get_by_test_id("logout").inner_text() == "Log out"

        page.get_by_test_id("logout").click()
        page.wait_for_url("**/login")
        assert page.locator("h1").inner_text() == "Log in"
        page.goto(live_server.url + "/account")
        assert page.url.startswith(live_server.url + "/login")
