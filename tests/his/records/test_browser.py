"""A doctor signs and downloads the PDF, and a pharmacist dispenses it, in headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from his.models import User
from tests.browser import chromium
from tests.conftest import TEST_PASSWORD, LiveServer

from .conftest import Visit
from .test_pdf import A5_POINTS, assert_authentic, read_pdf, signed_part, stored_qr

pytestmark = pytest.mark.e2e


def _login(page: object, url: str, username: str) -> None:
    page.goto(url + "/login")  # type: ignore[attr-defined]
    page.fill("input[name=username]", username)  # type: ignore[attr-defined]
    page.fill("input[name=password]", TEST_PASSWORD)  # type: ignore[attr-defined]
    page.click("form.form button[type=submit]")  # type: ignore[attr-defined]


def test_doctor_signs_an_overridden_prescription_and_the_pharmacist_dispenses_it(
    live_server: LiveServer, make_user: Callable[..., User], make_visit: Callable[..., Visit]
) -> None:
    make_user("doctor", username="bsminh", full_name="Lê Văn Minh")
    make_user("pharmacist", username="dsha", full_name="Phạm Thu Hà")
    make_visit(name="Trần Văn Bình", queue=7)
    with chromium() as browser:
        doctor = browser.new_page()
        _login(doctor, live_server.url, "bsminh")
        doctor.goto(live_server.url + "/records/")
        row = doctor.get_by_test_id("worklist").locator("tr", has_text="Trần Văn Bình")
        row.get_by_role("link").click()
        assert doctor.get_by_test_id("patient-name").inner_text() == "Trần Văn Bình"

        doctor.fill("input[name=systolic]", "145")
        doctor.fill("input[name=diastolic]", "90")
        doctor.fill("input[name=pulse]", "96")
        doctor.fill("input[name=weight]", "62")
        doctor.fill("input[name=height]", "165")
        doctor.get_by_test_id("save-vitals").click()
        assert "145/90" in doctor.get_by_test_id("vitals").inner_text()

        doctor.fill("input[name=icd10]", "I48")
        doctor.get_by_test_id("add-diagnosis").click()
        assert "Rung nhĩ" in doctor.get_by_test_id("diagnoses").inner_text()

        form = doctor.get_by_test_id("prescription-form")
        drugs, doses = form.locator("input[name=drug]"), form.locator("input[name=dosage]")
        drugs.nth(0).fill("VTS0012")
        doses.nth(0).fill("tối 1 viên")
        drugs.nth(1).fill("VTS0010")
        doses.nth(1).fill("sáng 1 viên")
        form.locator("input[name=days]").fill("10")
        doctor.get_by_test_id("save-prescription").click()
        warning = doctor.get_by_test_id("warning")
        assert warning.count() == 1
        assert "chảy máu" in warning.inner_text()

        doctor.get_by_test_id("sign").click()
        assert doctor.get_by_test_id("error").is_visible()
        doctor.get_by_test_id("override-reason").fill("Rung nhĩ, INR ổn định, đã tư vấn dấu hiệu chảy máu")
        doctor.get_by_test_id("sign").click()
        assert doctor.get_by_test_id("signed-badge").is_visible()
        code = doctor.get_by_test_id("prescription-code").first.inner_text()
        assert re.fullmatch(r"01234[0-9a-z]{7}-C", code)
        with doctor.expect_download() as downloading:
            doctor.get_by_test_id("pdf-link").click()
        download = downloading.value
        assert download.suggested_filename == f"don-thuoc-{code}.pdf"
        text, qr, size = read_pdf(Path(download.path()).read_bytes())
        assert size == pytest.approx(A5_POINTS, abs=0.5)
        for expected in (code, "Trần Văn Bình", "Warfarin 2 mg", "Aspirin 81 mg", "(I48)", "Lê Văn Minh"):
            assert expected in text, expected
        assert signed_part(qr) == stored_qr(live_server.app, code)
        assert_authentic(live_server.app, qr, code)
        doctor.get_by_test_id("print-link").click()
        assert code in doctor.get_by_test_id("printable-prescription").inner_text()

        pharmacist = browser.new_page()
        _login(pharmacist, live_server.url, "dsha")
        pharmacist.goto(live_server.url + "/pharmacy/")
        pharmacist.fill("input[name=q]", code.lower())
        pharmacist.get_by_role("button").filter(has_text=re.compile("Find|Tìm")).click()
        assert pharmacist.get_by_test_id("signature-status").get_attribute("data-valid") == "yes"
        pharmacist.get_by_test_id("dispense").click()
        assert pharmacist.get_by_test_id("dispensed-ok").is_visible()
        assert [cell.inner_text() for cell in pharmacist.get_by_test_id("dispensed").all()] == ["10", "10"]
        assert pharmacist.get_by_test_id("dispense").count() == 0
