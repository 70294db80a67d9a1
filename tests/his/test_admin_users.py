"""Admins manage staff accounts: list, create, deactivate, reactivate, reset passwords; sites."""

from __future__ import annotations

from sqlalchemy import select

from his.db import get_database
from his.models import AuditRecord, User, WebSession
from tests.conftest import TEST_PASSWORD, csrf_token, login


def _audit(app, action: str = "update") -> list[tuple[str | None, str, str | None]]:
    with get_database(app).session_scope() as db:
        rows = db.scalars(
            select(AuditRecord).where(AuditRecord.entity_type == "User", AuditRecord.action == action)
        ).all()
        return [(r.username, r.outcome, r.detail) for r in rows]


def test_admin_lists_and_filters_users(client, make_user):
    make_user("admin", username="admin")
    make_user("doctor", username="bs.lan", full_name="Trần Thị Lan")
    make_user("nurse", username="dd.hoa", full_name="Phạm Hoa", site="CENT")
    login(client, "admin")
    page = client.get("/admin/users").get_data(as_text=True)
    assert 'data-username="bs.lan"' in page
    assert 'data-username="dd.hoa"' in page
    by_name = client.get("/admin/users?q=lan").get_data(as_text=True)
    assert 'data-username="bs.lan"' in by_name
    assert 'data-username="dd.hoa"' not in by_name
    by_site = client.get("/admin/users?site=CENT").get_data(as_text=True)
    assert 'data-username="dd.hoa"' in by_site
    assert 'data-username="bs.lan"' not in by_site
    by_role = client.get("/admin/users?role=doctor").get_data(as_text=True)
    assert 'data-username="bs.lan"' in by_role
    assert 'data-username="admin"' not in by_role
    home = client.get("/").get_data(as_text=True)
    assert 'href="/admin/users"' in home
    assert 'href="/admin/sites"' in home


def test_admin_creates_a_staff_user_who_can_log_in(client, make_user, app):
    make_user("admin", username="admin")
    login(client, "admin")
    token = csrf_token(client, "/admin/users/new")
    form = {
        "csrf_token": token,
        "full_name": "Đỗ Minh Khoa",
        "role": "pharmacist",
        "site": "CENT",
        "username": "ds.khoa",
        "password": "khoa-2026-pass",
    }
    created = client.post("/admin/users/new", data=form)
    assert created.status_code == 302
    listing = client.get(created.headers["Location"]).get_data(as_text=True)
    assert "Đỗ Minh Khoa" in listing
    assert "Dược sĩ" in listing
    with get_database(app).session_scope() as db:
        user = db.scalar(select(User).where(User.username == "ds.khoa"))
        assert user is not None
        assert user.site.code == "CENT"
        assert user.password_hash.startswith("$argon2")
    assert [(u, o) for u, o, _ in _audit(app, "create")] == [("admin", "success")]
    assert login(app.test_client(), "ds.khoa", "khoa-2026-pass").status_code == 302


def test_a_bad_new_user_form_names_every_field_and_writes_nothing(client, make_user, app):
    make_user("admin", username="admin")
    login(client, "admin")
    token = csrf_token(client, "/admin/users/new")
    bad = {
        "csrf_token": token,
        "full_name": "",
        "role": "patient",
        "site": "",
        "username": "a b",
        "password": "x",
    }
    response = client.post("/admin/users/new", data=bad)
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    for field in ("full_name", "role", "username", "password"):
        assert f'data-field="{field}"' in text
    with get_database(app).session_scope() as db:
        assert db.scalar(select(User).where(User.username == "a b")) is None
    without_csrf = client.post(
        "/admin/users/new", data={**bad, "csrf_token": "", "username": "ok", "full_name": "A"}
    )
    assert without_csrf.status_code == 400


def test_deactivating_ends_sessions_and_tokens_and_reactivating_lets_back_in(
    client, make_user, make_token, app
):
    make_user("admin", username="admin")
    doctor = make_user("doctor", username="doctor")
    bearer = make_token(doctor)
    doctor_browser = app.test_client()
    login(doctor_browser, "doctor")
    assert doctor_browser.get("/account").status_code == 200
    assert (
        app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {bearer}"}).status_code == 200
    )

    login(client, "admin")
    token = csrf_token(client, "/admin/users")
    assert (
        client.post(f"/admin/users/{doctor.id}/active", data={"csrf_token": token, "active": "0"}).status_code
        == 302
    )
    assert doctor_browser.get("/account").status_code == 302
    assert (
        app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {bearer}"}).status_code == 401
    )
    assert login(app.test_client(), "doctor").status_code == 401
    assert "Đã khóa" in client.get("/admin/users?active=0").get_data(as_text=True)

    client.post(f"/admin/users/{doctor.id}/active", data={"csrf_token": token, "active": "1"})
    assert login(app.test_client(), "doctor").status_code == 302
    assert [(u, o, d) for u, o, d in _audit(app)] == [
        ("admin", "success", "deactivated"),
        ("admin", "success", "reactivated"),
    ]


def test_resetting_a_password_ends_the_users_sessions(client, make_user, app):
    make_user("admin", username="admin")
    nurse = make_user("nurse", username="nurse")
    nurse_browser = app.test_client()
    login(nurse_browser, "nurse")
    login(client, "admin")
    token = csrf_token(client, f"/admin/users/{nurse.id}/password")
    short = client.post(f"/admin/users/{nurse.id}/password", data={"csrf_token": token, "password": "short"})
    assert short.status_code == 422
    assert 'data-field="password"' in short.get_data(as_text=True)
    assert nurse_browser.get("/account").status_code == 200
    done = client.post(
        f"/admin/users/{nurse.id}/password", data={"csrf_token": token, "password": "new-pass-2026"}
    )
    assert done.status_code == 302
    assert nurse_browser.get("/account").status_code == 302
    assert login(app.test_client(), "nurse", TEST_PASSWORD).status_code == 401
    assert login(app.test_client(), "nurse", "new-pass-2026").status_code == 302
    assert client.get("/admin/users").status_code == 200, "the admin's own session must survive"
    with get_database(app).session_scope() as db:
        assert db.scalar(select(WebSession.id).where(WebSession.data.isnot(None))) is not None
    assert [(o, d) for _, o, d in _audit(app)] == [
        ("failure", "password reset refused"),
        ("success", "password reset"),
    ]


def test_only_admins_manage_users_and_a_refusal_is_audited(client, make_user, app):
    doctor = make_user("doctor", username="doctor")
    make_user("manager", username="manager")
    login(client, "manager")
    assert client.get("/admin/users").status_code == 403
    assert client.get("/admin/sites").status_code == 403
    token = csrf_token(client, "/")
    refused = client.post(f"/admin/users/{doctor.id}/active", data={"csrf_token": token, "active": "0"})
    assert refused.status_code == 403
    assert login(app.test_client(), "doctor").status_code == 302
    with get_database(app).session_scope() as db:
        denied = db.scalars(select(AuditRecord.path).where(AuditRecord.outcome == "denied")).all()
    assert set(denied) == {"/admin/users", "/admin/sites", f"/admin/users/{doctor.id}/active"}
    assert 'href="/admin/users"' not in client.get("/").get_data(as_text=True)


def test_sites_are_listed_read_only(client, make_user):
    make_user("admin", username="admin")
    make_user("doctor", site="CENT")
    login(client, "admin")
    page = client.get("/admin/sites").get_data(as_text=True)
    assert "Bệnh viện huyện" in page
    assert "Bệnh viện trung ương" in page
    assert "Tuyến huyện" in page
    assert "Tuyến trung ương" in page
    assert 'data-testid="sites-read-only"' in page
    assert "<form" not in page.split('id="main"')[1]
