"""The aiortc media service: the echo peer of the pre-call test, in a thread and as `vetinh media`."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from flask import Flask

from his import create_app
from tests.conftest import LiveServer
from tests.telehealth.conftest import REDIS_URL, call_headers, link_of
from tests.telehealth.peers import MovingBarsTrack, ToneTrack, run_async


async def _echo_test(base_url: str, token: str) -> dict[str, int]:
    """Send synthetic camera and microphone to the echo peer; count what comes back."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video, audio = MovingBarsTrack(hue=120), ToneTrack()
    pc.addTrack(video)
    pc.addTrack(audio)
    received = {"video": 0, "audio": 0}
    done = asyncio.Event()

    async def count(track: Any) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            received[track.kind] += 1
            if received["video"] >= 30 and received["audio"] >= 30:
                done.set()

    pc.on("track", lambda track: asyncio.ensure_future(count(track)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        response = await asyncio.to_thread(
            requests.post,
            base_url + "/api/v1/telehealth/call/echo",
            json={"sdp": pc.localDescription.sdp},
            headers=call_headers(token),
            timeout=20,
        )
        assert response.status_code == 200, response.text
        await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        await asyncio.wait_for(done.wait(), 15)
    finally:
        await pc.close()
        video.stop()
        audio.stop()
    return received


def test_the_echo_peer_sends_a_participants_own_media_back(
    live_server: LiveServer, visit_room: dict[str, Any]
) -> None:
    received = run_async(_echo_test(live_server.url, link_of(visit_room, "patient")))
    forged = requests.post(
        live_server.url + "/api/v1/telehealth/call/echo",
        json={"sdp": "v=0\r\n"},
        headers=call_headers(secrets.token_urlsafe(32)),
        timeout=10,
    )
    garbage = requests.post(
        live_server.url + "/api/v1/telehealth/call/echo",
        json={"sdp": "hello"},
        headers=call_headers(link_of(visit_room, "patient")),
        timeout=10,
    )

    assert forged.status_code == 403
    assert garbage.status_code == 422
    assert "sdp" in garbage.json()["fields"]
    assert received["video"] >= 30
    assert received["audio"] >= 30
    service = live_server.app.extensions["vetinh.telehealth.media"]
    assert service.running
    assert service._thread.name == "vetinh-media"


@pytest.fixture
def external_media(test_database: Any, settings_overrides: dict[str, Any]) -> Iterator[tuple[Flask, str]]:
    """Serve an app that hands media work to a `vetinh media` process over Redis."""
    if not REDIS_URL:
        pytest.skip(  # reason: Redis is not set up
            "VETINH_TEST_REDIS_URL is not set: `vetinh media` talks to the web processes through Redis"
        )
    from werkzeug.serving import make_server

    prefix = f"vetinh-test-{secrets.token_hex(4)}:"
    app = create_app(
        database_url=test_database.url,
        **{
            **settings_overrides,
            "event_backend": "redis",
            "redis_url": REDIS_URL,
            "telehealth_media": "external",
        },
    )
    app.config["VETINH_REDIS_PREFIX"] = prefix
    env = {
        **os.environ,
        "VETINH_ENV": "testing",
        "VETINH_DATABASE_URL": test_database.url,
        "VETINH_REDIS_URL": REDIS_URL,
        "VETINH_REDIS_PREFIX": prefix,
        "VETINH_ICE_SERVERS": "",
        "VETINH_SECRET_KEY": secrets.token_urlsafe(32),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from his.cli import main; main()", "media", "--seconds", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "media service is running" in line, line + process.stdout.read()
    time.sleep(0.5)  # let its Redis listener subscribe
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        process.terminate()
        process.wait(10)
        process.stdout.close()
        from his import events

        events.close(app)
        app.extensions["vetinh.audit"].close()


def test_vetinh_media_answers_echo_requests_for_the_web_processes(
    external_media: tuple[Flask, str], visit_room: dict[str, Any]
) -> None:
    app, url = external_media

    received = run_async(_echo_test(url, link_of(visit_room, "patient")))

    assert received["video"] >= 30
    # The web process ran no aiortc peer itself.
    assert "vetinh.telehealth.media" not in app.extensions
