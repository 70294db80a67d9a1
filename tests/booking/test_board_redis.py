"""The queue board hears a call made in another worker process's app, through Redis."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from his import create_app, events
from his.db import get_database
from tests.booking.helpers import bearer

REDIS_URL = os.environ.get("VETINH_TEST_REDIS_URL", "")


def test_a_call_in_one_worker_reaches_a_board_served_by_another(
    test_database, settings_overrides, app, client, clinic, make_session, patient_user, make_user, make_token
) -> None:
    if not REDIS_URL:
        pytest.skip("VETINH_TEST_REDIS_URL is not set: the cross-worker board test needs a Redis")
    prefix = f"vetinh-test-{secrets.token_hex(4)}:"
    overrides: dict[str, Any] = {**settings_overrides, "event_backend": "redis", "redis_url": REDIS_URL}
    caller, board = (create_app(database_url=test_database.url, **overrides) for _ in range(2))
    for each in (caller, board):
        each.config["VETINH_REDIS_PREFIX"] = prefix
    server = make_server("127.0.0.1", 0, board, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        session_id = make_session(clinic.id)
        token = make_token(patient_user(), "patient/*.*")
        booking = client.post(
            "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(token)
        ).get_json()
        desk = make_token(make_user("receptionist"), "user/*.*")
        client.post("/api/v1/checkins", json={"code": booking["checkin_code"]}, headers=bearer(desk))
        doctor = make_token(make_user("doctor"), "user/*.*")

        url = f"http://127.0.0.1:{server.server_port}/booking/board/DIST/events"
        with requests.get(url, stream=True, timeout=10) as stream:
            lines = stream.iter_lines(decode_unicode=True)
            assert next(lines).startswith("retry:")
            called = caller.test_client().post(
                f"/api/v1/sessions/{session_id}/queue/next", headers=bearer(doctor)
            )
            assert called.status_code == 200
            deadline = time.monotonic() + 5
            event = None
            for line in lines:
                if line == "event: queue.called":
                    event = "queue.called"
                elif event and line.startswith("data: "):
                    data = json.loads(line[len("data: ") :])
                    break
                assert time.monotonic() < deadline, "no queue.called event reached the board"
        assert data["queue_number"] == 1
        assert data["site"] == "DIST"
    finally:
        server.shutdown()
        server.server_close()
        for each in (caller, board):
            events.close(each)
            each.extensions["vetinh.audit"].close()
            get_database(each).dispose()
