"""Test the event bus (in-process and Redis) and its Server-Sent Events stream."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from flask import Flask
from sqlalchemy import text

from his import create_app, events
from his.db import get_database, get_session
from his.errors import Conflict
from tests.conftest import REDIS_URL


def _parse_sse(chunks: list[bytes]) -> list[dict[str, str]]:
    """Split an event stream into its messages, as a browser's EventSource would."""
    messages = []
    for block in b"".join(chunks).decode("utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        if fields:
            messages.append(fields)
    return messages


def test_subscriber_receives_events_of_its_topics_only(app: Flask) -> None:
    with app.app_context(), events.subscribe(["queue.called", "appointment.*"], timeout=0.2) as sub:
        events.publish("queue.called", {"number": 7})
        events.publish("payment.received", {"amount": "150000"})
        events.publish("appointment.booked", {"patient": "Nguyễn Văn A"})
        received = [(e.topic, e.data) for e in sub]
    assert received == [
        ("queue.called", {"number": 7}),
        ("appointment.booked", {"patient": "Nguyễn Văn A"}),
    ]


def test_every_subscriber_gets_its_own_copy(app: Flask) -> None:
    with app.app_context():
        first = events.subscribe("queue.called", timeout=0.2)
        second = events.subscribe("queue.called", timeout=0.2)
        events.publish("queue.called", {"number": 1})
        got_first = next(iter(first))
        got_first.data["number"] = 99
        assert [e.data for e in second] == [{"number": 1}]
        first.close()
        events.publish("queue.called", {"number": 2})
        assert first.get(timeout=0.1) is None


def test_publish_rejects_data_a_browser_could_not_read(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(TypeError):
            events.publish("queue.called", {"at": object()})
        with pytest.raises(TypeError):
            events.publish("queue.called", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="invalid event topic"):
            events.publish("queue.*", {})


def test_a_stuck_subscriber_never_blocks_the_publisher(app: Flask) -> None:
    overflow = 50
    with app.app_context(), events.subscribe("queue.called", timeout=0.1) as sub:
        started = time.monotonic()
        for number in range(events.SUBSCRIBER_QUEUE_SIZE + overflow):
            events.publish("queue.called", {"number": number})
        assert time.monotonic() - started < 5
        numbers = [e.data["number"] for e in sub]
    assert sub.dropped == overflow
    assert numbers[0] == overflow  # the oldest were dropped, the newest kept
    assert numbers[-1] == events.SUBSCRIBER_QUEUE_SIZE + overflow - 1


def test_events_of_a_request_leave_only_when_it_commits(app: Flask) -> None:
    seen_inside: list[object] = []
    sub = events.get_bus(app).subscribe(["queue.called"], timeout=0.2)

    @app.post("/api/v1/_test/call/<int:number>")
    def call(number: int) -> dict[str, Any]:
        events.publish("queue.called", {"number": number})
        get_session().execute(text("SELECT 1"))
        seen_inside.append(sub.get(timeout=0))
        if number == 13:
            raise Conflict("the number was already called")
        return {"called": number}

    client = app.test_client()
    assert client.post("/api/v1/_test/call/12").status_code == 200
    assert [e.data for e in sub] == [{"number": 12}]
    assert client.post("/api/v1/_test/call/13").status_code == 409
    assert [e.data for e in sub] == []
    assert seen_inside == [None, None]  # nothing left before the commit
    sub.close()


def test_publish_outside_a_unit_of_work_leaves_at_once(app: Flask) -> None:
    with app.app_context(), events.subscribe("slide.ready", timeout=0.2) as sub:
        events.publish("slide.ready", {"slide": "S-1"})
        assert sub.get(timeout=0) is not None


def test_sse_stream_frames_events_and_ends_when_the_client_leaves(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/api/v1/events/test/stream?topic=queue.called&keepalive=0.2", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    stream = cast(Iterator[bytes], iter(response.response))
    chunks = [next(stream)]
    with app.app_context():
        events.publish("queue.called", {"number": 21, "room": "Phòng khám 3"})
        events.publish("payment.received", {"invoice": "HD-1"})
    chunks.append(next(stream))
    chunks.append(next(stream))  # nothing more to say: a keep-alive comment
    response.close()

    messages = _parse_sse(chunks)
    assert messages[0]["retry"] == str(events.SSE_RETRY_MILLISECONDS)
    event = messages[1]
    assert event["event"] == "queue.called"
    assert event["id"]
    assert json.loads(event["data"]) == {"number": 21, "room": "Phòng khám 3"}
    assert messages[2] == {"comment": "keep-alive"}
    # The stream's subscription is gone once the client went away.
    assert len(events.get_bus(app).hub) == 0  # type: ignore[attr-defined]


def test_a_real_server_ends_the_stream_when_the_browser_leaves(app: Flask, live_server: Any) -> None:
    bus = events.get_bus(app)
    port = int(live_server.url.rsplit(":", 1)[1])
    browser = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    browser.request("GET", "/api/v1/events/test/stream?topic=queue.called&keepalive=0.1")
    stream = browser.getresponse()
    assert stream.readline().startswith(b"retry:")
    assert len(bus.hub) == 1  # type: ignore[attr-defined]
    stream.close()
    browser.close()
    deadline = time.monotonic() + 5
    while len(bus.hub) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert len(bus.hub) == 0, "the server kept streaming to a browser that left"  # type: ignore[attr-defined]


def test_publish_survives_an_unreachable_redis(
    test_database: Any, settings_overrides: dict[str, Any]
) -> None:
    overrides = {
        **settings_overrides,
        "event_backend": "redis",
        "redis_url": "redis://127.0.0.1:1/0",
    }
    app = create_app(database_url=test_database.url, **overrides)
    try:
        with app.app_context(), events.subscribe("queue.called", timeout=0.2) as sub:
            started = time.monotonic()
            events.publish("queue.called", {"number": 5})
            assert time.monotonic() - started < 3
            # Browsers on this process still hear it; other processes cannot.
            assert [e.data for e in sub] == [{"number": 5}]
    finally:
        events.close(app)
        app.extensions["vetinh.audit"].close()
        get_database(app).dispose()


@pytest.mark.redis
def test_redis_bus_carries_events_between_buses(redis_apps: list[Flask]) -> None:
    publisher, listener = redis_apps
    with listener.app_context(), events.subscribe(["queue.*"], timeout=2) as sub:
        with publisher.app_context():
            events.publish("queue.called", {"number": 3, "clinic": "Nội tổng quát"})
        event = sub.get(timeout=5)
    assert event is not None
    assert (event.topic, event.data) == ("queue.called", {"number": 3, "clinic": "Nội tổng quát"})


@pytest.mark.redis
def test_redis_prefix_keeps_deployments_apart(
    redis_apps: list[Flask], test_database: Any, settings_overrides: dict[str, Any]
) -> None:
    other = create_app(
        database_url=test_database.url,
        **{**settings_overrides, "event_backend": "redis", "redis_url": REDIS_URL},
    )
    other.config["VETINH_REDIS_PREFIX"] = f"vetinh-test-{secrets.token_hex(4)}:"
    try:
        with redis_apps[1].app_context(), events.subscribe("queue.called", timeout=0.5) as sub:
            with other.app_context():
                events.publish("queue.called", {"number": 1})
            with redis_apps[0].app_context():
                events.publish("queue.called", {"number": 2})
            assert [e.data for e in sub] == [{"number": 2}]
    finally:
        events.close(other)
        other.extensions["vetinh.audit"].close()
        get_database(other).dispose()


@pytest.mark.redis
def test_streams_recover_after_redis_drops_the_connection(redis_apps: list[Flask]) -> None:
    import redis

    publisher, listener = redis_apps
    bus = events.get_bus(listener)
    with listener.app_context(), events.subscribe("queue.called", timeout=0.2) as sub:
        admin = redis.Redis.from_url(REDIS_URL)
        try:
            ours = [c for c in admin.client_list() if c.get("name") == bus.listener_name]  # type: ignore[attr-defined]
            assert ours, "the listener connection is not named"
            for connection in ours:
                admin.client_kill_filter(_id=connection["id"])
        finally:
            admin.close()
        # Events published while the listener reconnects may be lost (at most
        # once); the stream must come back by itself.
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:
            with publisher.app_context():
                events.publish("queue.called", {"number": 4})
            received = sub.get(timeout=0.3)
    assert received is not None, "the subscription never heard from Redis again"
    assert received.data == {"number": 4}
