"""Receipts (biên lai thu tiền) of paid invoices: a stable number, a PDF in Vietnamese, for the right people only."""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import requests
from pypdf import PdfReader
from sqlalchemy import select

from billing.charges import record_charge, void_charge
from billing.invoices import Facility, open_invoice, refresh_invoice
from billing.models import Charge, Invoice, Receipt, ReceiptCounter
from billing.payments import record_desk_payment, refund, resolve_review, sign
from billing.receipts import ReceiptUnavailable, issue_receipt, receipt_of
from billing.services import import_prices, read_price_csv
from his.db import get_database
from his.models import AuditRecord, PatientLink, User
from tests.conftest import csrf_token, login

from .conftest import SECRET, URL, VISIT_AT, notice_body, post_notice

WORDS_192589 = "Bằng chữ: Một trăm chín mươi hai nghìn năm trăm tám mươi chín đồng"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def _number(sequence: int, year: int | None = None) -> str:
    """Return the receipt number of an invoice paid now (the receipt takes the year it was paid in)."""
    return f"BL{year or datetime.now(HANOI).year}-{sequence:06d}"


def _text(pdf: bytes) -> str:
    """Return the PDF's text as a reader sees it, whitespace runs folded to one space."""
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def _owner(app, make_user, patient: str, username: str = "benhnhan") -> User:
    user = make_user("patient", username=username)
    with app.app_context(), get_database(app).session_scope() as session:
        session.get(User, user.id).patient_id = patient
    return user


@pytest.fixture
def seller(app):
    app.config["VETINH_EINVOICE_SELLER_NAME"] = "Bệnh viện huyện Demo"
    app.config["VETINH_EINVOICE_SELLER_TAX_CODE"] = "0101234567"


def _pay_by_vietqr(client, invoice, transaction_id: str = "FT25253987654") -> None:
    body = notice_body(transaction_id, 192589, f"VIENPHI {invoice.reference}")
    assert post_notice(client, body).get_json()["status"] == "credited"


def test_the_patient_downloads_the_receipt_of_a_vietqr_payment(
    app, client, make_user, seller, invoice, patient
):
    _pay_by_vietqr(client, invoice)
    _owner(app, make_user, patient)
    login(client, "benhnhan")

    first = client.get(f"/billing/invoices/{invoice.id}/receipt.pdf")
    again = client.get(f"/billing/invoices/{invoice.id}/receipt.pdf")

    assert first.status_code == 200
    assert first.mimetype == "application/pdf"
    assert first.headers["Content-Disposition"] == f'attachment; filename="bien-lai-{_number(1)}.pdf"'
    text = _text(first.data)
    for expected in (
        "BỆNH VIỆN HUYỆN DEMO",
        "Mã số thuế: 0101234567",
        "BIÊN LAI THU TIỀN",
        f"Số: {_number(1)}",
        "Họ tên người bệnh: Nguyễn Văn An",
        "Số thẻ BHYT: DN4010123456789",
        invoice.reference,
        "Khám bệnh nội khoa",
        "Siêu âm ổ bụng",
        "1.234,5",  # the unit price of a tablet keeps its half đồng
        "Tổng chi phí: 562.945 ₫",
        "Người bệnh phải trả: 192.589 ₫",
        "Đã thu: 192.589 ₫",
        WORDS_192589,
        "Chuyển khoản VietQR",
        "FT25253987654",
        "Thu tự động qua VietQR",
    ):
        assert expected in text, expected
    assert f"Số: {_number(1)}" in _text(again.data)
    with app.app_context(), get_database(app).session_scope() as session:
        paid_at = session.get(Invoice, invoice.id).paid_at
        assert [r.number for r in session.scalars(select(Receipt))] == [_number(1)]
    moment = (paid_at if paid_at.tzinfo else paid_at.replace(tzinfo=UTC)).astimezone(HANOI)
    assert f"Thu lúc {moment:%H:%M %d/%m/%Y}" in text
    with app.app_context(), get_database(app).session_scope() as session:
        reads = session.scalars(select(AuditRecord).where(AuditRecord.entity_type == "Receipt")).all()
        assert [(row.entity_id, row.username, row.patient_id, row.outcome) for row in reads] == [
            (_number(1), "benhnhan", patient, "success")
        ] * 2


def test_a_cash_receipt_names_the_cashier_and_a_refunded_excess_transfer_is_shown(
    app, client, make_user, make_patient, make_encounter, seller, prices, invoice, patient
):
    make_user("cashier", username="thungan", full_name="Trần Thị Thu Ngân")
    with app.app_context(), get_database(app).session_scope() as session:
        import_prices(
            session,
            read_price_csv(
                "code,name,kind,unit,price,insurance_price,valid_from,valid_to,xml_group\n"
                "KB.YC,Khám theo yêu cầu,visit,lần,150000,,2024-01-01,,13\n"
            ),
        )
    walk_in = make_patient(name="Đặng Thị Ánh Tuyết")
    visit = make_encounter(walk_in)
    with app.app_context(), get_database(app).session_scope() as session:
        record_charge(session, walk_in, visit, "KB.YC", 1, datetime(2025, 9, 10, 3, 0, tzinfo=UTC), "c1")
        cash_invoice = open_invoice(session, visit, Facility(code="01234")).id
        record_desk_payment(
            session, cash_invoice, channel="cash", amount=150000, cashier="thungan", terminal_reference=None
        )
    # The first patient transferred too much; the cashier credits it and gives the excess back.
    excess = notice_body("FT25253000001", 200000, f"VIENPHI {invoice.reference}")
    assert post_notice(client, excess).get_json()["status"] == "review"
    with app.app_context(), get_database(app).session_scope() as session:
        from billing.models import BankNotification

        held = session.scalars(select(BankNotification)).one()
        resolve_review(session, held.id, action="credit", cashier="thungan", note="Chuyển dư")
        refund(
            session,
            invoice.id,
            amount=7411,
            channel="cash",
            reason="Trả lại tiền chuyển dư",
            cashier="thungan",
        )
        assert session.get(Invoice, invoice.id).status == "paid"

    login(client, "thungan")
    cash = _text(client.get(f"/billing/invoices/{cash_invoice}/receipt.pdf").data)
    transfer = _text(client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").data)

    for expected in (
        f"Số: {_number(1)}",
        "Họ tên người bệnh: Đặng Thị Ánh Tuyết",
        "Số thẻ BHYT: không có",
        "Người bệnh phải trả: 150.000 ₫",
        "Tiền mặt · 150.000 ₫",
        "thu ngân: Trần Thị Thu Ngân",
        "Bằng chữ: Một trăm năm mươi nghìn đồng",
    ):
        assert expected in cash, expected
    for expected in (
        f"Số: {_number(2)}",
        "Đã thu: 200.000 ₫",
        "Đã hoàn trả: 7.411 ₫",
        "Thực thu: 192.589 ₫",
        "Trả lại tiền chuyển dư",
        "FT25253000001",
        WORDS_192589,
    ):
        assert expected in transfer, expected


def test_an_unpaid_invoice_has_no_receipt(app, client, make_user, invoice, patient):
    make_user("cashier", username="thungan")
    login(client, "thungan")
    page = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert "receipt.pdf" not in page

    refused = client.get(f"/billing/invoices/{invoice.id}/receipt.pdf")

    assert refused.status_code == 409
    assert refused.mimetype == "text/html"
    assert "chưa được thanh toán đủ nên chưa có biên lai" in refused.get_data(as_text=True)
    with app.app_context(), get_database(app).session_scope() as session:
        assert session.scalars(select(Receipt)).all() == []
        with pytest.raises(ReceiptUnavailable):
            issue_receipt(session, session.get(Invoice, invoice.id))


def test_the_cashier_screen_links_the_receipt_once_paid(app, client, make_user, invoice):
    make_user("cashier", username="thungan")
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(
            session, invoice.id, channel="card", amount=192589, cashier="thungan", terminal_reference="POS-77"
        )
    login(client, "thungan")
    page = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert f'href="/billing/invoices/{invoice.id}/receipt.pdf"' in page
    assert _number(1) in page
    listing = client.get("/billing").get_data(as_text=True)
    assert f'href="/billing/invoices/{invoice.id}/receipt.pdf"' in listing
    text = _text(client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").data)
    assert "Thẻ · 192.589 ₫" in text
    assert "mã giao dịch thẻ: POS-77" in text


def test_another_patient_and_other_staff_are_refused_and_audited_a_parent_is_not(
    app, client, make_user, make_patient, invoice, patient
):
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
    _owner(app, make_user, make_patient(name="Lê Văn Khác"), username="nguoila")
    make_user("doctor", username="bacsi")
    make_user("cashier", username="thungan-tw", site="CENT")
    make_user("manager", username="quanly")
    parent = make_user("patient", username="me")
    with app.app_context(), get_database(app).session_scope() as session:
        session.add(PatientLink(user_id=parent.id, patient_id=patient, relationship_code="parent"))

    login(client, "nguoila")
    assert client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_token(client, "/my/invoices")})
    login(client, "bacsi")
    assert client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "thungan-tw")  # a cashier of a hospital that does not care for the patient
    assert client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "quanly")
    assert client.get(f"/billing/invoices/{invoice.id}/receipt.pdf").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, "me")
    allowed = client.get(f"/billing/invoices/{invoice.id}/receipt.pdf")
    assert allowed.status_code == 200
    assert "Nguyễn Văn An" in _text(allowed.data)
    assert "receipt.pdf" in client.get("/my/invoices").get_data(as_text=True)

    with app.app_context(), get_database(app).session_scope() as session:
        denied = session.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).all()
        assert {(row.username, row.patient_id) for row in denied} >= {("nguoila", patient)}
        assert {"bacsi", "thungan-tw"} <= {row.username for row in denied}


def test_receipt_numbers_run_per_year_and_survive_a_refund_and_a_new_payment(
    app, make_patient, make_encounter, invoice
):
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
        refund(session, invoice.id, amount=192589, channel="cash", reason="Nhầm", cashier="thungan")
        assert session.get(Invoice, invoice.id).status == "open"
        record_desk_payment(session, invoice.id, channel="card", amount=192589, cashier="thungan")
        assert session.scalars(select(Receipt.number)).all() == [_number(1)]
    year = datetime.now(HANOI).year
    visits = []
    for name, paid_in in (("Phạm Minh Châu", year + 1), ("Võ Thị Lan", year + 1), ("Hồ Văn Nam", year)):
        patient = make_patient(name=name)
        visits.append((patient, make_encounter(patient), paid_in))
    numbers = []
    with app.app_context(), get_database(app).session_scope() as session:
        for patient, encounter, paid_in in visits:
            record_charge(session, patient, encounter, "XN01", 1, VISIT_AT, encounter)
            bill = open_invoice(session, encounter, Facility(code="01234"))
            # Paid at 00:30 on 1 January in Hà Nội, which is still the year before in UTC.
            bill.amount_paid = bill.amount_due
            bill.status = "paid"
            bill.paid_at = datetime(paid_in, 1, 1, 0, 30, tzinfo=HANOI).astimezone(UTC)
            numbers.append(issue_receipt(session, bill).number)
    assert numbers == [_number(1, year + 1), _number(2, year + 1), _number(2, year)]


def test_a_voided_charge_that_leaves_the_bill_paid_numbers_its_receipt(app, invoice):
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="cash", amount=100000, cashier="thungan")
        assert receipt_of(session, invoice.id) is None
        scan = session.scalars(select(Charge).where(Charge.item_code == "SA01")).one()
        void_charge(session, scan.id, reason="Không thực hiện", cashier="thungan")
        bill = refresh_invoice(session, session.get(Invoice, invoice.id), Facility(code="01234"))
        assert bill.status == "paid"
        receipt = receipt_of(session, invoice.id)
        assert receipt is not None
        assert receipt.number == _number(1)


ON_POSTGRES = os.environ.get("VETINH_TEST_BACKEND", "sqlite") == "postgresql"


def test_invoices_paid_at_the_same_moment_get_distinct_consecutive_numbers(
    app, live_server, secret, prices, make_patient, make_encounter
):
    count = 16 if ON_POSTGRES else 8
    references = []
    for index in range(count):
        patient = make_patient(name=f"Bệnh nhân {index}")
        encounter = make_encounter(patient)
        with app.app_context(), get_database(app).session_scope() as session:
            record_charge(session, patient, encounter, "XN01", 1, VISIT_AT, f"x{index}")
            bill = open_invoice(session, encounter, Facility(code="01234"))
            assert bill.amount_due == Decimal(46200)
            references.append(bill.reference)
    start = threading.Barrier(count)

    def pay(index: int) -> str:
        body = notice_body(f"FT-RUSH-{index}", 46200, f"VIENPHI {references[index]}")
        with requests.Session() as http:
            start.wait()
            answer = http.post(
                live_server.url + URL,
                data=body,
                headers={"Content-Type": "application/json", "X-Signature": sign(body, SECRET)},
                timeout=120,
            )
        return str(answer.json()["status"])

    with ThreadPoolExecutor(max_workers=count) as pool:
        assert list(pool.map(pay, range(count))) == ["credited"] * count
    with get_database(app).session_scope() as session:
        numbers = sorted(session.scalars(select(Receipt.number)))
        last = session.scalars(select(ReceiptCounter.last)).one()
    assert numbers == [_number(sequence) for sequence in range(1, count + 1)]
    assert last == count
