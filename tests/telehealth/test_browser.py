"""The call page in headless Chromium with fake camera and microphone."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask_babel import force_locale, gettext

from tests.conftest import LiveServer
from tests.telehealth.conftest import launch_chromium, link_of

pytestmark = pytest.mark.e2e

REMOTE_FRAMES = """() => {
  const video = document.querySelector('#remote-videos video');
  if (!video || video.videoWidth === 0 || video.paused) return null;
  return video.getVideoPlaybackQuality().totalVideoFrames;
}"""


def vietnamese(server: LiveServer, text: str) -> str:
    """Return what the page shows for ``text`` in Vietnamese, the default locale."""
    with server.app.test_request_context(), force_locale("vi"):
        return str(gettext(text))


def _open_call(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    # The preview starts by itself: the camera shows before joining.
    page.wait_for_function("() => document.getElementById('local-video').videoWidth > 0", timeout=10_000)
    return page


def _frames(page: Any) -> int | None:
    value = page.evaluate(REMOTE_FRAMES)
    return int(value) if value is not None else None


def test_two_pages_see_each_others_video_within_five_seconds(
    live_server: LiveServer, consult_room: dict[str, Any], call_pages: Any
) -> None:
    doctor = _open_call(call_pages, f"{live_server.url}/telehealth/call#{link_of(consult_room, 'host')}")
    specialist = _open_call(
        call_pages, f"{live_server.url}/telehealth/call#{link_of(consult_room, 'specialist')}"
    )

    started = time.monotonic()
    doctor.get_by_test_id("join-button").click()
    doctor.wait_for_function("() => !document.getElementById('controls').hidden", timeout=5_000)
    specialist.get_by_test_id("join-button").click()
    for page in (doctor, specialist):
        page.wait_for_function(REMOTE_FRAMES, timeout=max(1.0, 5.0 - (time.monotonic() - started)) * 1000)
    first = [_frames(doctor), _frames(specialist)]
    time.sleep(0.5)
    second = [_frames(doctor), _frames(specialist)]
    elapsed = time.monotonic() - started

    assert elapsed < 5.0
    assert all(b is not None and a is not None and b > a for a, b in zip(first, second, strict=True))
    assert doctor.get_by_test_id("call-status").inner_text() == vietnamese(
        live_server, "You are in the call."
    )
    assert specialist.locator("#remote-videos figcaption").inner_text().startswith("Trần Thị Lan")
    assert vietnamese(live_server, "Time left") in doctor.get_by_test_id("countdown").inner_text()

    doctor.fill("#chat-text", "Anh xem giúp em điện tim này")
    doctor.press("#chat-text", "Enter")
    specialist.locator("#chat-log li", has_text="Anh xem giúp em điện tim này").wait_for(timeout=5_000)
    assert specialist.locator("#chat-log li").inner_text() == "Trần Thị Lan: Anh xem giúp em điện tim này"


def test_precall_echo_shows_the_patient_their_own_camera_and_microphone(
    live_server: LiveServer, visit_room: dict[str, Any], call_pages: Any
) -> None:
    page = _open_call(call_pages, f"{live_server.url}/telehealth/call#{link_of(visit_room, 'patient')}")

    page.get_by_test_id("test-button").click()
    for check in ("camera", "mic", "connection"):
        page.wait_for_selector(f'#echo [data-check="{check}"][data-state="ok"]', timeout=15_000)
    frames = page.evaluate(
        "() => document.getElementById('echo-video').getVideoPlaybackQuality().totalVideoFrames"
    )
    time.sleep(0.5)
    later = page.evaluate(
        "() => document.getElementById('echo-video').getVideoPlaybackQuality().totalVideoFrames"
    )

    assert page.evaluate("() => document.getElementById('echo-video').videoWidth") > 0
    assert later > frames
    assert page.get_by_test_id("echo-results").inner_text().split("\n") == [
        vietnamese(live_server, "Camera works"),
        vietnamese(live_server, "Microphone works"),
        vietnamese(live_server, "Connection works"),
    ]


def test_a_blocked_camera_is_explained_to_the_patient(
    live_server: LiveServer, visit_room: dict[str, Any], playwright: Any
) -> None:
    # Fake devices, but no automatic "Allow": the browser refuses the camera.
    browser = launch_chromium(playwright, "--use-fake-device-for-media-stream")
    try:
        page = browser.new_page()
        page.goto(f"{live_server.url}/telehealth/call#{link_of(visit_room, 'patient')}")
        expected = vietnamese(
            live_server,
            "The browser is not allowed to use your camera or microphone. "
            "Allow it in the browser's settings and reload the page.",
        )
        page.wait_for_function(
            "text => document.getElementById('call-status').textContent === text",
            arg=expected,
            timeout=10_000,
        )
        status = page.get_by_test_id("call-status").get_attribute("data-kind")
    finally:
        browser.close()

    assert status == "error"


def test_the_doctor_admits_the_waiting_patient_from_the_page(
    live_server: LiveServer, visit_room: dict[str, Any], call_pages: Any
) -> None:
    doctor = _open_call(call_pages, f"{live_server.url}/telehealth/call#{link_of(visit_room, 'host')}")
    patient = _open_call(call_pages, f"{live_server.url}/telehealth/call#{link_of(visit_room, 'patient')}")

    doctor.get_by_test_id("join-button").click()
    doctor.wait_for_function("() => !document.getElementById('controls').hidden", timeout=5_000)
    patient.get_by_test_id("join-button").click()
    waiting_text = vietnamese(live_server, "Please wait: the doctor will let you in shortly.")
    patient.wait_for_function(
        "text => document.getElementById('call-status').textContent === text", arg=waiting_text, timeout=5_000
    )
    lobby_entry = doctor.locator("#lobby-list li", has_text="Nguyễn Văn An")
    lobby_entry.wait_for(timeout=5_000)
    patient_saw_video_before = patient.evaluate(REMOTE_FRAMES)
    lobby_entry.locator("button[data-action=admit]").click()
    for page in (doctor, patient):
        page.wait_for_function(REMOTE_FRAMES, timeout=5_000)

    assert patient_saw_video_before is None
    assert patient.get_by_test_id("call-status").inner_text() == vietnamese(
        live_server, "You are in the call."
    )
    assert doctor.locator("#lobby-list li").inner_text() == vietnamese(live_server, "Nobody is waiting.")
    assert doctor.locator("#remote-videos figcaption button").inner_text() == vietnamese(
        live_server, "Send back to waiting room"
    )
