"""A central pathologist reads a district consult in headless Chromium, and the district doctor sees the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from his.models import User
from tests.browser import chromium
from tests.conftest import TEST_PASSWORD
from tests.pathology.helpers import SlideClient, open_case

pytestmark = pytest.mark.e2e


def log_in(page: Any, url: str, username: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_selector("[data-testid=logout]")


def drag(page: Any, box: dict[str, float], start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0], box["y"] + end[1], steps=8)
    page.mouse.up()


def test_pathologist_reads_annotates_measures_and_signs_and_the_district_doctor_sees_it(
    app: Flask,
    live_server: Any,
    make_user: Callable[..., User],
    make_token: Callable[..., str],
) -> None:
    doctor = make_user("doctor", username="bs.huyen", full_name="Nguyễn Thị Huyền", site="DIST")
    make_user("pathologist", username="gpb.long", full_name="Phạm Văn Long", site="CENT")
    case = open_case(
        SlideClient(app.test_client(), make_token(doctor)),
        "CMU-1-Small-Region.svs",
        question="Ung thư biểu mô tuyến?",
    )
    slide_id = case["slides"][0]["id"]

    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        tiles: list[tuple[str, int]] = []
        page.on("response", lambda r: tiles.append((r.url, r.status)) if "_files/" in r.url else None)

        log_in(page, live_server.url, "gpb.long")
        page.goto(live_server.url + "/pathology/worklist")
        row = page.locator(f"tr[data-case-id='{case['id']}']")
        assert row.get_attribute("data-status") == "new"
        assert row.get_by_test_id("slide-count").inner_text() == "1"
        row.get_by_test_id("case-link").click()
        page.get_by_test_id("take-case").click()
        page.wait_for_selector("[data-testid=case-status]")
        assert page.get_by_test_id("clinical-question").inner_text() == "Ung thư biểu mô tuyến?"

        page.get_by_test_id("open-slide").click()
        page.wait_for_url(f"**/pathology/slides/{slide_id}")
        assert page.get_by_test_id("meta-vendor").inner_text() == "aperio"
        assert page.get_by_test_id("meta-mpp").inner_text() == "0.499 × 0.499 µm"
        assert page.get_by_test_id("meta-power").inner_text() == "20×"
        assert page.get_by_test_id("meta-levels").inner_text() == "1"
        assert page.get_by_test_id("slide-label").is_visible()
        page.wait_for_function("document.querySelector('.scale-bar-label').textContent.length > 0")
        page.wait_for_timeout(500)
        served = [url for url, status in tiles if status == 200 and f"/slides/{slide_id}_files/" in url]
        assert served, f"no tile responses in the page's network log: {tiles}"

        box = page.get_by_test_id("slide-viewer").bounding_box()
        assert box is not None
        page.click("[data-tool=rectangle]")
        drag(
            page, box, (box["width"] * 0.35, box["height"] * 0.35), (box["width"] * 0.55, box["height"] * 0.6)
        )
        page.get_by_test_id("annotation-label").fill("Ổ u")
        page.get_by_test_id("save-annotation").click()
        page.wait_for_selector("[data-testid=annotation-item][data-kind=rectangle]")

        page.click("[data-tool=measurement]")
        drag(page, box, (box["width"] * 0.3, box["height"] * 0.7), (box["width"] * 0.6, box["height"] * 0.7))
        measured = page.get_by_test_id("pending-measure").inner_text()
        assert "µm" in measured or "mm" in measured, measured
        page.get_by_test_id("save-annotation").click()
        page.wait_for_selector("[data-testid=annotation-item][data-kind=measurement]")
        assert page.locator("[data-testid=annotation-layer] polygon").count() == 1
        assert page.locator("[data-testid=annotation-layer] polyline").count() == 1

        # The district doctor waits on the case page; the signed report arrives by the event bus.
        district = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        log_in(district, live_server.url, "bs.huyen")
        district.goto(live_server.url + "/pathology/cases")
        district.locator(f"tr[data-case-id='{case['id']}']").get_by_test_id("case-link").click()
        assert district.get_by_test_id("report-pending").is_visible()
        district.wait_for_selector("#pathology-live[data-connected=true]", state="attached")

        page.get_by_role("link", name="Quay lại ca").click()
        page.fill("textarea[name=macroscopic]", "Hai mảnh sinh thiết, 8 và 11 mm.")
        page.fill(
            "textarea[name=microscopic]", "Tuyến không đều, nhân không điển hình, xâm nhập lớp dưới niêm mạc."
        )
        page.fill("textarea[name=conclusion]", "Ung thư biểu mô tuyến đại tràng sigma, biệt hoá vừa.")
        page.fill("input[name=diagnosis_code]", "C18.7")
        page.fill("input[name=diagnosis_display]", "U ác của đại tràng sigma")
        page.get_by_test_id("sign-report").click()
        page.wait_for_selector("[data-testid=signed-report]")
        assert page.get_by_test_id("signature-status").get_attribute("class") == "badge badge-success"

        district.wait_for_selector("[data-testid=signed-report]", timeout=15_000)
        assert district.get_by_test_id("report-conclusion").inner_text() == (
            "Ung thư biểu mô tuyến đại tràng sigma, biệt hoá vừa."
        )
        assert "C18.7" in district.get_by_test_id("report-diagnosis").inner_text()
        assert district.get_by_test_id("signature-status").get_attribute("class") == "badge badge-success"
        assert "Phạm Văn Long" in district.get_by_test_id("report-signer").inner_text()

        district.get_by_test_id("open-slide").click()
        district.wait_for_selector("[data-testid=annotation-item][data-kind=measurement]")
        items = district.get_by_test_id("annotation-item").all_inner_texts()
        assert any("Ổ u" in item and "mm²" in item for item in items), items
        assert any("µm" in item or " mm" in item for item in items if "Ổ u" not in item), items
        district.wait_for_function(
            "document.querySelectorAll('[data-testid=annotation-layer] polygon').length === 1"
        )
        assert district.locator("[data-tool=rectangle]").count() == 0  # reported: nothing more to draw
