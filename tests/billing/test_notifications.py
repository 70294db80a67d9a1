"""Bank notifications: signed, kept once per transaction, credited only when they match exactly."""

from __future__ import annotations

import threading
from decimal import Decimal

import requests
from sqlalchemy import func, select

from billing.models import BankNotification, Invoice, Payment
from billing.payments import sign
from his import events
from his.db import get_database
from his.models import AuditRecord
from tests.conftest import csrf_token, login

from .conftest import SECRET, URL, notice_body, post_notice


def _state(app, invoice_id):
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, invoice_id)
        payments = session.scalar(select(func.count()).select_from(Payment)) or 0
        notices = session.scalars(select(BankNotification).order_by(BankNotification.id)).all()
        return invoice.status, invoice.amount_paid, payments, [(n.status, n.review_reason) for n in notices]


def test_an_exact_transfer_pays_the_invoice_and_says_so(app, client, invoice):
    with app.app_context(), events.subscribe("payment.received", timeout=2) as stream:
        response = post_notice(
            client, notice_body("FT001", 192589, f"NGUYEN VAN AN chuyen tien VIENPHI {invoice.reference}")
        )
        event = stream.get(2)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "credited",
        "transaction_id": "FT001",
        "invoice": invoice.reference,
        "review_reason": None,
    }
    assert _state(app, invoice.id) == ("paid", Decimal("192589"), 1, [("credited", None)])
    assert event is not None
    assert event.data["reference"] == invoice.reference
    assert (event.data["channel"], event.data["amount"], event.data["status"]) == ("vietqr", "192589", "paid")


def test_banks_that_mangle_the_note_still_match(app, client, invoice):
    mangled = invoice.reference.lower().replace("vp2025", "vp 2025 ")
    assert (
        post_notice(client, notice_body("FT002", "192589", f"IBFT VIENPHI{mangled}")).get_json()["status"]
        == "credited"
    )


def test_a_bad_signature_is_refused_audited_and_changes_nothing(app, client, invoice):
    body = notice_body("FT003", 192589, f"VIENPHI {invoice.reference}")
    wrong = [None, "", "sha256=" + "0" * 64, "not-hex-at-all", sign(body, "another-secret")]
    for signature in wrong:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Signature"] = signature
        response = client.post(URL, data=body, headers=headers)
        assert response.status_code == 401, signature
        assert response.get_json()["code"] == "BILLING_BAD_SIGNATURE"
    assert _state(app, invoice.id) == ("open", Decimal("0"), 0, [])
    with get_database(app).session_scope() as session:
        denied = session.scalars(
            select(AuditRecord).where(AuditRecord.entity_type == "PaymentNotification")
        ).all()
        assert [row.outcome for row in denied] == ["denied"] * len(wrong)


def test_a_tampered_body_fails_its_signature(app, client, invoice):
    genuine = notice_body("FT004", 1000, f"VIENPHI {invoice.reference}")
    tampered = genuine.replace(b"1000", b"192589")
    assert post_notice(client, tampered, sign(genuine, SECRET)).status_code == 401
    assert _state(app, invoice.id) == ("open", Decimal("0"), 0, [])


def test_a_replayed_notification_is_credited_once(app, client, invoice):
    body = notice_body("FT005", 192589, f"VIENPHI {invoice.reference}")
    assert post_notice(client, body).get_json()["status"] == "credited"
    replay = post_notice(client, body)
    assert replay.status_code == 200
    assert replay.get_json()["status"] == "duplicate"
    assert _state(app, invoice.id) == ("paid", Decimal("192589"), 1, [("credited", None)])


def test_ten_concurrent_copies_credit_once(app, live_server, invoice):
    body = notice_body("FT006", 192589, f"VIENPHI {invoice.reference}")
    headers = {"Content-Type": "application/json", "X-Signature": sign(body, SECRET)}
    barrier = threading.Barrier(10)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def deliver() -> None:
        barrier.wait()
        response = requests.post(live_server.url + URL, data=body, headers=headers, timeout=60)
        with lock:
            answers.append((response.status_code, response.json().get("status")))

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(answers) == [(200, "credited")] + [(200, "duplicate")] * 9
    assert _state(app, invoice.id) == ("paid", Decimal("192589"), 1, [("credited", None)])


def test_partial_excess_and_unmatched_transfers_wait_for_a_cashier(app, client, invoice):
    held = [
        ("FT071", 100000, f"VIENPHI {invoice.reference}", "partial"),
        ("FT072", 200000, f"VIENPHI {invoice.reference}", "excess"),
        ("FT073", 192589, "VIENPHI VP2099999999", "unmatched"),
        ("FT074", 192589, "chuyen tien kham benh", "unmatched"),
    ]
    for transaction_id, amount, note, reason in held:
        answer = post_notice(client, notice_body(transaction_id, amount, note)).get_json()
        assert (answer["status"], answer["review_reason"]) == ("review", reason)
    assert _state(app, invoice.id) == ("open", Decimal("0"), 0, [("review", row[3]) for row in held])


def test_a_transfer_for_a_paid_invoice_is_held_not_credited_again(app, client, invoice):
    post_notice(client, notice_body("FT008", 192589, f"VIENPHI {invoice.reference}"))
    second = post_notice(client, notice_body("FT009", 192589, f"VIENPHI {invoice.reference}"))
    assert second.get_json()["review_reason"] == "closed"
    assert _state(app, invoice.id) == (
        "paid",
        Decimal("192589"),
        1,
        [("credited", None), ("review", "closed")],
    )


def test_a_negative_or_fractional_amount_is_refused(app, client, secret):
    for amount in [-192589, 1925.89, "192589.5", 0, "abc", None]:
        response = post_notice(client, notice_body("FT010", amount, "VIENPHI VP2025000001"))
        assert response.status_code == 422, amount
        assert "amount" in response.get_json()["fields"]
    with get_database(app).session_scope() as session:
        assert session.scalars(select(BankNotification)).all() == []


def test_the_cashier_credits_a_partial_transfer_and_the_rest_is_still_owed(app, client, make_user, invoice):
    post_notice(client, notice_body("FT011", 100000, f"VIENPHI {invoice.reference}"))
    post_notice(client, notice_body("FT012", 5000, "no reference at all"))
    make_user("cashier", username="thungan")
    login(client, "thungan")
    assert "2" in client.get("/billing").get_data(as_text=True).split('data-testid="review-count"')[1][:80]
    html = client.get("/billing/review").get_data(as_text=True)
    assert "FT011" in html
    assert "FT012" in html
    with get_database(app).session_scope() as session:
        held = {n.transaction_id: n.id for n in session.scalars(select(BankNotification))}
    token = csrf_token(client, "/billing/review")
    client.post(
        f"/billing/review/{held['FT011']}",
        data={"action": "credit", "note": "Khách trả trước", "csrf_token": token},
    )
    client.post(
        f"/billing/review/{held['FT012']}",
        data={"action": "return", "note": "Không rõ người gửi", "csrf_token": token},
    )
    status, paid, payments, notices = _state(app, invoice.id)
    assert (status, paid, payments) == ("open", Decimal("100000"), 1)
    assert notices == [("resolved", "partial"), ("resolved", "unmatched")]
    assert "FT011" not in client.get("/billing/review").get_data(as_text=True)
    with get_database(app).session_scope() as session:
        audit = session.scalars(select(AuditRecord).where(AuditRecord.action == "resolve")).all()
        assert [row.username for row in audit] == ["thungan", "thungan"]
    api = client.get(f"/api/v1/invoices/{invoice.id}/vietqr").get_json()
    assert api["amount"] == "92589"
