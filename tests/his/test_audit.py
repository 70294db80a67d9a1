"""The audit log: every access to patient data, denied ones included, and the admin page."""

from __future__ import annotations

from sqlalchemy import select

from his.db import get_database
from his.models import AuditRecord
from tests.conftest import login


def test_admin_page_lists_and_filters_audit_records(client, make_user, app):
    make_user("admin", username="admin")
    make_user("doctor", username="doctor")
    login(client.application.test_client(), "doctor", "wrong-password")
    login(client, "admin")
    page = client.get("/admin/audit")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Nhật ký truy cập" in text
    assert "doctor" in text
    filtered = client.get("/admin/audit?outcome=failure&username=doctor").get_data(as_text=True)
    assert "badge-failure" in filtered
    assert "badge-success" not in filtered
    none = client.get("/admin/audit?username=nobody").get_data(as_text=True)
    assert "Không có bản ghi nào khớp với bộ lọc." in none


def test_the_audit_page_is_for_admins_only_and_a_refusal_is_audited(client, make_user, app):
    make_user("doctor", username="doctor")
    login(client, "doctor")
    response = client.get("/admin/audit")
    assert response.status_code == 403
    assert "Không có quyền truy cập" in response.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        denied = db.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).all()
    assert [(r.username, r.path) for r in denied] == [("doctor", "/admin/audit")]


def test_batched_audit_records_are_written_on_close(app, test_database):
    from his import audit
    from his.db import Database

    writer = audit.AuditWriter(Database(test_database.url), interval=60)
    writer.add({"action": "read", "entity_type": "Patient", "entity_id": "p1", "outcome": "success"})
    with get_database(app).session_scope() as db:
        assert db.scalar(select(AuditRecord.id).where(AuditRecord.entity_id == "p1")) is None
    writer.close()
    with get_database(app).session_scope() as db:
        assert db.scalar(select(AuditRecord.id).where(AuditRecord.entity_id == "p1")) is not None
