"""Consented recording: refused without everyone's consent; a Chromium page's media lands in a file."""

from __future__ import annotations

import time
from typing import Any

import av
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from fhir import services as store
from his.db import get_database
from telehealth.models import Recording
from tests.conftest import LiveServer
from tests.telehealth.conftest import call_headers, link_of
from tests.telehealth.peers import CallPeer, LoopThread


def test_recording_needs_everyones_consent(client: FlaskClient, consult_room: dict[str, Any]) -> None:
    host, specialist = link_of(consult_room, "host"), link_of(consult_room, "specialist")
    for token in (host, specialist):
        client.post("/api/v1/telehealth/call/join", headers=call_headers(token))
    client.post("/api/v1/telehealth/call/consent", json={"given": True}, headers=call_headers(host))

    refused = client.post(
        "/api/v1/telehealth/call/recording", json={"action": "start"}, headers=call_headers(host)
    )
    by_specialist = client.post(
        "/api/v1/telehealth/call/recording", json={"action": "start"}, headers=call_headers(specialist)
    )
    client.post("/api/v1/telehealth/call/consent", json={"given": True}, headers=call_headers(specialist))
    accepted = client.post(
        "/api/v1/telehealth/call/recording", json={"action": "start"}, headers=call_headers(host)
    )
    withdrawn = client.post(
        "/api/v1/telehealth/call/consent", json={"given": False}, headers=call_headers(specialist)
    )
    state = client.post("/api/v1/telehealth/call/join", headers=call_headers(host)).get_json()["room"]

    assert refused.status_code == 409
    assert refused.get_json()["code"] == "RECORDING_CONSENT_MISSING"
    assert by_specialist.status_code == 409
    assert accepted.status_code == 200
    assert withdrawn.status_code == 200
    assert state["recording"] is False


@pytest.mark.e2e
def test_a_call_between_chromium_and_an_aiortc_peer_is_recorded_with_video(
    live_server: LiveServer, consult_room: dict[str, Any], app: Flask, call_pages: Any
) -> None:
    url = live_server.url
    host_token = link_of(consult_room, "host")
    loop = LoopThread()
    doctor = CallPeer(url, host_token, hue=40)
    try:
        page = call_pages.new_page()
        page.goto(f"{url}/telehealth/call#{link_of(consult_room, 'specialist')}")
        page.wait_for_function("() => document.getElementById('local-video').videoWidth > 0", timeout=10_000)
        page.get_by_test_id("join-button").click()
        page.wait_for_function("() => !document.getElementById('controls').hidden", timeout=5_000)
        page.get_by_test_id("consent").check()
        loop.run(doctor.join())
        page.wait_for_function(
            "() => { const v = document.querySelector('#remote-videos video'); return v && v.videoWidth > 0; }",
            timeout=10_000,
        )
        requests.post(
            url + "/api/v1/telehealth/call/consent",
            json={"given": True},
            headers=call_headers(host_token),
            timeout=10,
        )
        started = requests.post(
            url + "/api/v1/telehealth/call/recording",
            json={"action": "start"},
            headers=call_headers(host_token),
            timeout=10,
        )
        assert started.status_code == 200, started.text
        page.get_by_test_id("recording-banner").wait_for(state="visible", timeout=5_000)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _recording_rows(app):
            time.sleep(0.2)
        time.sleep(2.0)
        stopped = requests.post(
            url + "/api/v1/telehealth/call/recording",
            json={"action": "stop"},
            headers=call_headers(host_token),
            timeout=20,
        )
        page.get_by_test_id("recording-banner").wait_for(state="hidden", timeout=5_000)
    finally:
        loop.run(doctor.close())
        loop.close()

    assert stopped.status_code == 200, stopped.text
    (document_id,) = stopped.json()["documents"]
    (recording,) = _recording_rows(app)
    settings = app.extensions["vetinh.settings"]
    with av.open(f"{settings.data_dir}/{recording.path}") as container:
        video_frames = sum(1 for _ in container.decode(video=0))
    with av.open(f"{settings.data_dir}/{recording.path}") as container:
        audio_frames = sum(1 for _ in container.decode(audio=0))
        kinds = sorted(stream.type for stream in container.streams)
    with app.app_context(), get_database(app).session_scope() as session:
        document = store.read(session, "DocumentReference", document_id).resource

    assert kinds == ["audio", "video"]
    assert video_frames >= 30
    assert audio_frames > 0
    assert document["content"][0]["attachment"]["size"] == recording.size_bytes
    assert document["context"]["encounter"][0]["reference"] == f"Encounter/{consult_room_encounter(app)}"


def _recording_rows(app: Flask) -> list[Recording]:
    with get_database(app).session_scope() as session:
        rows = list(session.scalars(select(Recording)))
        for row in rows:
            session.expunge(row)
        return rows


def consult_room_encounter(app: Flask) -> str | None:
    from telehealth.models import Room

    with get_database(app).session_scope() as session:
        return session.scalars(select(Room.encounter_id)).one()
