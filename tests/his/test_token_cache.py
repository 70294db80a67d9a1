"""A worker remembers bearer tokens briefly, and never past their end."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, event

import his.accounts
from his.db import get_database, utcnow
from his.models import ApiToken
from tests.conftest import csrf_token, login


def _me(app: Flask, token: str) -> int:
    return app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code


def _token_queries(app: Flask) -> list[str]:
    seen: list[str] = []

    @event.listens_for(get_database(app).engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_tokens" in statement:
            seen.append(statement)

    return seen


def test_a_token_is_looked_up_once_while_remembered(app, make_user, make_token):
    token = make_token(make_user("doctor"))
    asked = _token_queries(app)
    assert [_me(app, token) for _ in range(3)] == [200, 200, 200]
    assert len(asked) == 1


def test_a_remembered_token_is_refused_the_moment_it_expires(app, make_user, make_token, monkeypatch):
    token = make_token(make_user("doctor"), ttl=3600)
    asked = _token_queries(app)
    assert [_me(app, token) for _ in range(2)] == [200, 200]
    assert len(asked) == 1  # remembered
    later = utcnow() + timedelta(hours=2)
    monkeypatch.setattr(his.accounts, "utcnow", lambda: later)
    response = app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "TOKEN_EXPIRED"
    assert len(asked) == 1  # refused from what was remembered, not from a new lookup


@pytest.fixture
def no_cache(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    settings_overrides["token_cache_seconds"] = 0
    return settings_overrides


def test_a_cache_time_of_zero_looks_every_token_up(no_cache, app, make_user, make_token):
    token = make_token(make_user("doctor"))
    asked = _token_queries(app)
    assert [_me(app, token) for _ in range(3)] == [200, 200, 200]
    assert len(asked) == 3


@pytest.fixture
def brief_cache(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    settings_overrides["token_cache_seconds"] = 1.0
    return settings_overrides


def test_a_token_deleted_behind_the_apps_back_stops_working_within_the_cache_time(
    brief_cache, app, make_user, make_token
):
    token = make_token(make_user("doctor"))
    assert _me(app, token) == 200
    with get_database(app).session_scope() as session:
        session.execute(delete(ApiToken))
    assert _me(app, token) == 200  # still remembered: the cache's promise is "within 1 s"
    time.sleep(1.1)
    assert _me(app, token) == 401


@pytest.fixture
def kept_a_minute(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    settings_overrides["token_cache_seconds"] = 60.0
    return settings_overrides


@pytest.mark.redis
def test_a_deactivated_users_token_is_refused_by_every_worker_at_once(
    kept_a_minute, redis_apps, make_user, make_token
):
    serving, admin_side = redis_apps  # two workers on one Redis
    make_user("admin", username="admin")
    doctor = make_user("doctor", username="doctor")
    token = make_token(doctor)
    assert _me(serving, token) == 200  # now remembered by the serving worker, for a minute

    browser = admin_side.test_client()
    login(browser, "admin")
    form = {"csrf_token": csrf_token(browser, "/admin/users"), "active": "0"}
    assert browser.post(f"/admin/users/{doctor.id}/active", data=form).status_code == 302

    # The news crosses Redis in milliseconds; far sooner than the minute the token is kept.
    deadline = time.monotonic() + 5
    while _me(serving, token) != 401:
        assert time.monotonic() < deadline, "the other worker still accepts the deactivated user's token"
        time.sleep(0.05)
