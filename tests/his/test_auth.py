"""Logging in and out, CSRF, rate limiting, tokens and scopes."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from argon2 import PasswordHasher, profiles
from sqlalchemy import func, select, update

from his.db import get_database, utcnow
from his.models import ApiToken, AuditRecord, User, WebSession
from tests.conftest import TEST_PASSWORD, csrf_token, login


def test_login_shows_the_role_home_page_and_logout_ends_the_session(client, make_user, app):
    make_user("doctor", username="doctor")
    response = login(client, "doctor")
    assert response.status_code == 302
    home = client.get("/")
    assert "Bàn làm việc của bác sĩ" in home.get_data(as_text=True)
    token = csrf_token(client, "/")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    with get_database(app).session_scope() as db:
        assert db.scalar(select(func.count()).select_from(WebSession).where(WebSession.data.isnot(None))) <= 1
    page = client.get("/").get_data(as_text=True)
    assert "Bàn làm việc của bác sĩ" not in page
    assert client.get("/account").status_code == 302


def test_wrong_password_gets_one_generic_message_and_is_audited(client, make_user, app):
    make_user("nurse", username="nurse")
    wrong = login(client, "nurse", "not-the-password")
    unknown = login(client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    text_wrong = wrong.get_data(as_text=True)
    assert "Sai tên đăng nhập hoặc mật khẩu" in text_wrong
    assert "Sai tên đăng nhập hoặc mật khẩu" in unknown.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        outcomes = db.scalars(select(AuditRecord.outcome).where(AuditRecord.action == "login")).all()
    assert outcomes == ["failure", "failure"]


def test_repeated_failures_are_rate_limited_even_with_the_right_password(client, make_user, app):
    make_user("cashier", username="cashier")
    limit = app.extensions["vetinh.settings"].login_max_failures
    for _ in range(limit):
        assert login(client, "cashier", "guess").status_code == 401
    blocked = login(client, "cashier", TEST_PASSWORD)
    assert blocked.status_code == 429
    assert "Đăng nhập sai quá nhiều lần. Vui lòng chờ vài phút rồi thử lại." in blocked.get_data(as_text=True)


def test_a_form_posted_without_csrf_token_is_refused(client, make_user):
    make_user("doctor", username="doctor")
    response = client.post("/login", data={"username": "doctor", "password": TEST_PASSWORD})
    assert response.status_code == 400
    assert client.get("/account").status_code == 302


def test_token_endpoint_issues_a_bearer_token_that_the_api_accepts(client, make_user):
    make_user("doctor", username="doctor")
    response = client.post("/api/v1/auth/token", json={"username": "doctor", "password": TEST_PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    assert "user/*.*" in body["scope"].split()
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.get_json()["username"] == "doctor"


def test_token_endpoint_refuses_wrong_credentials_with_json(client, make_user):
    make_user("doctor", username="doctor")
    response = client.post("/api/v1/auth/token", json={"username": "doctor", "password": "nope"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "LOGIN_FAILED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_cannot_grant_more_than_the_role_allows(client, make_user):
    make_user("patient", username="pat")
    response = client.post(
        "/api/v1/auth/token",
        json={"username": "pat", "password": TEST_PASSWORD, "scope": "system/*.*"},
    )
    assert response.status_code == 422
    assert response.get_json()["fields"] == {"scope": "not allowed"}


def test_tampered_and_expired_tokens_get_401(client, make_user, make_token, app):
    user = make_user("doctor", username="doctor")
    token = make_token(user)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    with get_database(app).session_scope() as db:
        db.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert expired.status_code == 401
    assert expired.get_json()["code"] == "TOKEN_EXPIRED"


def test_api_without_credentials_is_401_json(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.get_json()["code"] == "UNAUTHORIZED"


def test_passwords_are_stored_as_argon2_hashes(make_user, app):
    make_user("pharmacist", username="pharma")
    with get_database(app).session_scope() as db:
        stored = db.scalar(select(User.password_hash).where(User.username == "pharma"))
    assert stored.startswith("$argon2id$")
    assert TEST_PASSWORD not in stored


@pytest.mark.backend_free
def test_outside_the_tests_passwords_are_hashed_at_rfc_9106_cost(cheap_password_hashing: PasswordHasher):
    """The tests hash cheaply (see the fixture); the product uses RFC 9106's low-memory profile."""
    recommended = profiles.RFC_9106_LOW_MEMORY
    stored = cheap_password_hashing.hash(TEST_PASSWORD)
    assert stored.startswith(
        f"$argon2id$v=19$m={recommended.memory_cost},t={recommended.time_cost},p={recommended.parallelism}$"
    )


def test_cli_token_create_prints_a_working_token(app, make_user, client, test_database, tmp_path):
    make_user("manager", username="boss")
    env = {
        "VETINH_DATABASE_URL": test_database.url,
        "VETINH_ENV": "testing",
        "VETINH_SECRET_KEY": "x" * 40,
        "VETINH_SCHEDULER_ENABLED": "0",
        "VETINH_INSTANCE_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "his.cli", "token", "create", "--user", "boss", "--scope", "user/*.read"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.get_json()["scope"] == "user/*.read"


def test_staff_logging_in_at_the_same_moment_all_get_in(live_server, make_user):
    """Ten people pressing "Log in" together on the embedded SQLite server: no "database is locked"."""
    import re
    import threading

    import requests

    users = [make_user("nurse", username=f"y-ta-{n}") for n in range(10)]
    ready = threading.Barrier(len(users))
    outcomes: dict[str, object] = {}

    def log_in(username: str) -> None:
        with requests.Session() as browser:
            page = browser.get(live_server.url + "/login", timeout=60).text
            token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
            ready.wait()
            answer = browser.post(
                live_server.url + "/login",
                data={"username": username, "password": TEST_PASSWORD, "csrf_token": token},
                allow_redirects=False,
                timeout=60,
            )
            account = browser.get(live_server.url + "/account", allow_redirects=False, timeout=60)
            outcomes[username] = (answer.status_code, account.status_code)

    threads = [threading.Thread(target=log_in, args=(user.username,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outcomes == {user.username: (302, 200) for user in users}


def test_registration_reports_every_bad_field_in_one_round_and_writes_nothing(client, app):
    token = csrf_token(client, "/register")
    form = {
        "csrf_token": token,
        "full_name": "Nguyễn Thị Bình",
        "birth_date": "1990-05-04",
        "sex": "",
        "phone": "abc",
        "national_id": "12",
        "username": "binh",
        "password": "short",
    }
    response = client.post("/register", data=form)
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    for field in ("sex", "national_id", "phone", "password"):
        assert f'data-field="{field}"' in text, field
    with get_database(app).session_scope() as db:
        assert db.scalar(select(func.count()).select_from(User)) == 0
