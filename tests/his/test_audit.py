"""The audit log: every access to patient data, denied ones included, and the admin page."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from his import audit
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


def test_audit_page_shows_labels_names_and_keeps_the_codes(client, make_user, app):
    from his.patients import PatientDetails, create_patient

    with get_database(app).session_scope() as db:
        patient_id = create_patient(
            db,
            PatientDetails(full_name="Hoàng Thị Mai", birth_date=date(1985, 3, 2), sex="female"),
            site_id=None,
        )
    make_user("admin", username="admin")
    with app.test_request_context("/"):
        audit.record("read", "Appointment", "f7777184-aaaa", patient_id=patient_id)
        audit.record("search", "PathologyCase", None, outcome="denied")
    login(client, "admin")
    text = client.get("/admin/audit").get_data(as_text=True)
    assert "Hoàng Thị Mai" in text
    assert f'title="{patient_id}"' in text
    assert patient_id[:8] in text
    assert '<span title="read">Xem</span>' in text
    assert '<span title="Appointment">Lịch hẹn</span>' in text
    assert '<span title="search">Tìm kiếm</span>' in text
    assert '<span title="PathologyCase">Ca giải phẫu bệnh</span>' in text
    assert '<span title="login">Đăng nhập</span>' in text
    assert '<code class="muted code-small">login</code>' in text
    assert 'badge-denied" title="denied"' in text
    filtered = client.get("/admin/audit?action=search").get_data(as_text=True)
    assert '<span title="PathologyCase">' in filtered
    assert "Hoàng Thị Mai" not in filtered
    by_type = client.get("/admin/audit?entity_type=Appointment").get_data(as_text=True)
    assert "Hoàng Thị Mai" in by_type
    assert '<span title="PathologyCase">' not in by_type
    with get_database(app).session_scope() as db:
        name_reads = db.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.entity_type == "Patient", AuditRecord.action == "read"
            )
        ).all()
    assert name_reads == [f"names on the audit log: {patient_id}"] * 2
