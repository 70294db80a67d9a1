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


def _nav_rows(page) -> int:
    """Count the distinct rows the main navigation's links sit on."""
    tops = page.eval_on_selector_all(
        ".mainnav > ul > li",
        "items => items.filter(li => li.offsetParent !== null).map(li => Math.round(li.getBoundingClientRect().top))",
    )
    return len(set(tops))


def test_a_managers_full_top_bar_fits_one_row_on_a_laptop_and_folds_on_a_phone(
    live_server, make_user, tmp_path
):
    make_user("manager", username="manager", full_name="Vũ Thị Quản Lý")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(live_server.url + "/login")
        page.fill("input[name=username]", "manager")
        page.fill("input[name=password]", TEST_PASSWORD)
        page.click("form.form button[type=submit]")
        page.get_by_test_id("home-heading").wait_for()
        assert page.locator(".mainnav a").count() >= 9
        page.screenshot(path=str(tmp_path / "manager-1366.png"))
        assert _nav_rows(page) == 1
        page.click(".nav-more summary")
        page.screenshot(path=str(tmp_path / "manager-1366-more.png"))
        page.locator(".nav-more").get_by_role("link", name="Cuộc gọi video").click()
        page.wait_for_url("**/telehealth/")
        page.go_back()
        page.get_by_test_id("home-heading").wait_for()
        bar = page.locator(".topbar").bounding_box()
        assert bar is not None
        assert bar["height"] < 80, bar
        assert page.evaluate("document.documentElement.scrollWidth") <= 1366

        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(tmp_path / "manager-390.png"))
        assert not page.locator(".mainnav").is_visible()
        for control in (
            ".lang-switch button[value=en]",
            ".lang-switch button[value=vi]",
            "[data-testid=logout]",
        ):
            box = page.locator(control).bounding_box()
            assert box is not None, control
            assert box["width"] > 20, control
            assert box["x"] + box["width"] <= 390, control
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.click(".nav-toggle-label")
        assert page.locator(".mainnav").is_visible()
        assert page.locator(".nav-folded").get_by_role("link", name="Cuộc gọi video").is_visible()
        page.screenshot(path=str(tmp_path / "manager-390-menu.png"))
        print("SCREENSHOTS", tmp_path)
