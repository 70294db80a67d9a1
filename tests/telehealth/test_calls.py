"""Two real aiortc peers call each other through the live server's signalling."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from his import create_app
from tests.conftest import LiveServer
from tests.telehealth.conftest import REDIS_URL, call_headers, link_of
from tests.telehealth.peers import CallPeer, run_async

FRAMES = 30
CALL_SECONDS = 20


async def _call(first: CallPeer, second: CallPeer) -> None:
    try:
        await first.join()
        await second.join()
        await asyncio.wait_for(asyncio.gather(first.enough.wait(), second.enough.wait()), CALL_SECONDS)
    finally:
        await asyncio.gather(first.close(), second.close())


def test_consult_peers_each_receive_the_others_video(
    live_server: LiveServer, consult_room: dict[str, Any]
) -> None:
    doctor = CallPeer(live_server.url, link_of(consult_room, "host"), hue=40)
    specialist = CallPeer(live_server.url, link_of(consult_room, "specialist"), hue=200)

    run_async(_call(doctor, specialist))

    assert doctor.frames[specialist.me["id"]] >= FRAMES
    assert specialist.frames[doctor.me["id"]] >= FRAMES


@pytest.fixture
def second_worker(
    app: Flask, test_database: Any, settings_overrides: dict[str, Any]
) -> Iterator[tuple[str, str]]:
    """Serve the same database from two apps (two gunicorn-like workers) joined by Redis."""
    if not REDIS_URL:
        pytest.skip("VETINH_TEST_REDIS_URL is not set: signalling across workers needs a Redis")
    from werkzeug.serving import make_server

    prefix = f"vetinh-test-{secrets.token_hex(4)}:"
    overrides = {**settings_overrides, "event_backend": "redis", "redis_url": REDIS_URL}
    workers = [create_app(database_url=test_database.url, **overrides) for _ in range(2)]
    servers = []
    for worker in workers:
        worker.config["VETINH_REDIS_PREFIX"] = prefix
        server = make_server("127.0.0.1", 0, worker, threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        servers.append(server)
    yield tuple(f"http://127.0.0.1:{server.server_port}" for server in servers)  # type: ignore[misc]
    for server, worker in zip(servers, workers, strict=True):
        server.shutdown()
        server.server_close()
        from his import events

        events.close(worker)
        worker.extensions["vetinh.audit"].close()


def test_signalling_crosses_workers_through_redis(
    second_worker: tuple[str, str], consult_room: dict[str, Any]
) -> None:
    first_url, second_url = second_worker
    doctor = CallPeer(first_url, link_of(consult_room, "host"), hue=40)
    specialist = CallPeer(second_url, link_of(consult_room, "specialist"), hue=200)

    run_async(_call(doctor, specialist))

    assert doctor.frames[specialist.me["id"]] >= FRAMES
    assert specialist.frames[doctor.me["id"]] >= FRAMES


async def _call_through_lobby(doctor: CallPeer, patient: CallPeer, base_url: str) -> list[int]:
    seen_before_admission: list[int] = []
    try:
        await doctor.join()
        waiting = await patient.join()
        assert waiting["state"] == "waiting"
        assert waiting["peers"] == []
        # Waiting patients may not signal anyone.
        refused = await patient.signal({"type": "offer", "to": doctor.me["id"], "sdp": "v=0\r\n"})
        assert refused.status_code == 403
        assert refused.json()["code"] == "CALL_NOT_ADMITTED"
        await asyncio.sleep(0.5)
        seen_before_admission.append(sum(doctor.frames.values()))

        lobby = await asyncio.to_thread(
            requests.get,
            base_url + "/api/v1/telehealth/call/lobby",
            headers=call_headers(doctor.token),
            timeout=10,
        )
        assert [p["name"] for p in lobby.json()["waiting"]] == ["Nguyễn Văn An"]
        admitted = await asyncio.to_thread(
            requests.post,
            base_url + "/api/v1/telehealth/call/lobby",
            json={"participant": patient.me["id"], "action": "admit"},
            headers=call_headers(doctor.token),
            timeout=10,
        )
        assert admitted.status_code == 200, admitted.text
        await asyncio.wait_for(patient.admitted.wait(), 5)
        in_call = await patient.join()
        assert in_call["state"] == "in_call"
        assert [p["id"] for p in in_call["peers"]] == [doctor.me["id"]]
        await asyncio.wait_for(asyncio.gather(doctor.enough.wait(), patient.enough.wait()), CALL_SECONDS)
    finally:
        await asyncio.gather(doctor.close(), patient.close())
    return seen_before_admission


def test_patient_gets_video_only_after_the_doctor_admits_them(
    live_server: LiveServer, visit_room: dict[str, Any]
) -> None:
    doctor = CallPeer(live_server.url, link_of(visit_room, "host"), hue=40)
    patient = CallPeer(live_server.url, link_of(visit_room, "patient"), hue=200)

    before = run_async(_call_through_lobby(doctor, patient, live_server.url))

    assert before == [0]
    assert patient.states == ["waiting", "in_call"]
    assert doctor.frames[patient.me["id"]] >= FRAMES
    assert patient.frames[doctor.me["id"]] >= FRAMES


async def _drop_and_come_back(doctor: CallPeer, specialist: CallPeer, base_url: str) -> CallPeer:
    await doctor.join()
    await specialist.join()
    await asyncio.wait_for(asyncio.gather(doctor.enough.wait(), specialist.enough.wait()), CALL_SECONDS)
    # The specialist's network drops: connections and event stream gone, no "leave" sent.
    await specialist.close()
    back = CallPeer(base_url, specialist.token, hue=120)
    doctor.enough.clear()
    doctor.frames.clear()
    try:
        state = await back.join()
        assert state["state"] == "in_call"
        assert [p["id"] for p in state["peers"]] == [doctor.me["id"]]
        await asyncio.wait_for(asyncio.gather(doctor.enough.wait(), back.enough.wait()), CALL_SECONDS)
    finally:
        await asyncio.gather(doctor.close(), back.close())
    return back


def test_a_participant_whose_connection_dropped_comes_back_into_the_call(
    live_server: LiveServer, consult_room: dict[str, Any]
) -> None:
    doctor = CallPeer(live_server.url, link_of(consult_room, "host"), hue=40)
    specialist = CallPeer(live_server.url, link_of(consult_room, "specialist"), hue=200)

    back = run_async(_drop_and_come_back(doctor, specialist, live_server.url))

    assert back.frames[doctor.me["id"]] >= FRAMES
    assert doctor.frames[back.me["id"]] >= FRAMES
