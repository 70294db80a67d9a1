"""Invoices: one per encounter, split line by line, paid by VietQR, card or cash at the desk."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from billing.charges import record_charge
from billing.coverage import CardEntry, register_card
from billing.invoices import Facility, UnpricedCharges, open_invoice
from billing.models import Invoice
from billing.payments import InvalidPayment, record_desk_payment, whole_dong
from billing.vietqr import parse_payload
from fhir import services as store
from his.db import get_database
from his.models import AuditRecord, User
from tests.conftest import csrf_token, login

from .conftest import VISIT_AT

DISTRICT = Facility(code="01234")


@pytest.fixture
def bank(app):
    app.config["VETINH_BANK_BIN"] = "970436"
    app.config["VETINH_BANK_ACCOUNT"] = "0011001234567"


def _card(session, patient, code="DN4010123456789", facility="01234"):
    register_card(
        session,
        patient,
        CardEntry(code, date(2025, 1, 1), date(2025, 12, 31), facility),
        visit_date=date(2025, 9, 10),
    )


def _charge_visit(session, patient, encounter, *items):
    record_charge(session, patient, encounter, "KB01", 1, VISIT_AT, f"checkin:{encounter}")
    for index, (code, quantity) in enumerate(items):
        record_charge(
            session,
            patient,
            encounter,
            code,
            quantity,
            VISIT_AT + timedelta(minutes=index),
            f"s:{encounter}:{index}",
        )


@pytest.fixture
def billed_visit(app, prices, patient, encounter):
    """A DN card holder (80%) at their registered facility: visit, two ultrasounds, ten tablets."""
    with get_database(app).session_scope() as session:
        _card(session, patient)
        _charge_visit(session, patient, encounter, ("SA01", 2), ("TH01", 10))
        return open_invoice(session, encounter, DISTRICT).id


def test_each_line_shows_the_fund_the_copayment_and_the_full_payment(app, billed_visit):
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, billed_visit)
        rows = [(line.code, line.total, line.fund, line.copay, line.patient_full) for line in invoice.lines]
        assert rows == [
            ("KB01", Decimal("50600"), Decimal("40480"), Decimal("10120"), Decimal("0")),
            # The fund recognises 200.000 ₫ of each 250.000 ₫ ultrasound; the rest is the patient's.
            ("SA01", Decimal("500000"), Decimal("320000"), Decimal("80000"), Decimal("100000")),
            ("TH01", Decimal("12345"), Decimal("9876"), Decimal("2469"), Decimal("0")),
        ]
        assert (invoice.total, invoice.fund, invoice.amount_due) == (
            Decimal("562945"),
            Decimal("370356"),
            Decimal("192589"),
        )
        assert invoice.benefit_level == 4
        assert invoice.reference == f"VP2025{invoice.id:06d}"
        fhir_invoice = store.read(session, "Invoice", invoice.invoice_resource_id).resource
    assert fhir_invoice["totalNet"] == {"value": Decimal("192589"), "currency": "VND"}
    assert fhir_invoice["lineItem"][1]["priceComponent"][1] == {
        "type": "deduction",
        "code": {"text": "BHYT"},
        "amount": {"value": Decimal("320000"), "currency": "VND"},
    }


def test_a_cheap_visit_is_paid_in_full_by_the_fund(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        _card(session, patient)
        _charge_visit(session, patient, encounter)
        invoice = open_invoice(session, encounter, DISTRICT)
        assert (invoice.fund, invoice.amount_due, invoice.reasons) == (Decimal("50600"), 0, "low_cost_visit")


def test_without_a_card_the_patient_pays_everything(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        _charge_visit(session, patient, encounter, ("SA01", 1))
        invoice = open_invoice(session, encounter, DISTRICT)
        assert (invoice.fund, invoice.amount_due) == (0, Decimal("300600"))


def test_one_invoice_per_encounter_follows_new_charges(app, billed_visit, patient, encounter):
    with get_database(app).session_scope() as session:
        record_charge(session, patient, encounter, "XN01", 1, VISIT_AT, "late:1")
        again = open_invoice(session, encounter, DISTRICT)
        assert again.id == billed_visit
        assert sorted(line.code for line in again.lines) == ["KB01", "SA01", "TH01", "XN01"]
        assert len(session.scalars(select(Invoice)).all()) == 1


def test_an_unpriced_charge_blocks_collection_until_priced(app, prices, patient, encounter):
    with get_database(app).session_scope() as session:
        _charge_visit(session, patient, encounter, ("CT01", 1))
        invoice = open_invoice(session, encounter, DISTRICT)
        assert [line.code for line in invoice.lines] == ["KB01"]
        with pytest.raises(UnpricedCharges) as caught:
            record_desk_payment(session, invoice.id, channel="cash", amount=50600, cashier="thungan")
        assert caught.value.extra["item_codes"] == ["CT01"]


@pytest.fixture
def cashier(client, make_user):
    make_user("cashier", username="thungan")
    login(client, "thungan")
    return client


def test_the_cashier_sees_the_split_and_the_qr_for_the_exact_amount(
    app, bank, cashier, billed_visit, encounter
):
    response = cashier.get(f"/billing/encounters/{encounter}/invoice")
    assert response.status_code == 302
    html = cashier.get(response.headers["Location"]).get_data(as_text=True)
    assert "320.000\u00a0₫" in html
    assert "100.000\u00a0₫" in html
    assert f"/billing/invoices/{billed_visit}/vietqr.svg" in html
    api = cashier.get(f"/api/v1/invoices/{billed_visit}/vietqr").get_json()
    fields = parse_payload(api["payload"])
    assert (fields.bank_bin, fields.account, fields.amount) == ("970436", "0011001234567", Decimal("192589"))
    assert fields.note == f"VIENPHI {api['reference']}"
    assert fields.dynamic
    assert api["payload"] in html
    png = cashier.get(f"/billing/invoices/{billed_visit}/vietqr.png")
    assert png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG")
    svg = cashier.get(f"/billing/invoices/{billed_visit}/vietqr.svg")
    assert svg.mimetype == "image/svg+xml"
    assert b"<svg" in svg.data


def test_cash_and_card_at_the_desk_settle_the_invoice(app, bank, cashier, billed_visit):
    page = f"/billing/invoices/{billed_visit}"
    token = csrf_token(cashier, page)
    too_much = cashier.post(
        page + "/payments", data={"channel": "cash", "amount": "200000", "csrf_token": token}
    )
    assert too_much.status_code == 302
    cashier.post(
        page + "/payments",
        data={"channel": "card", "amount": "100000", "terminal_reference": "T-1", "csrf_token": token},
    )
    cashier.post(page + "/payments", data={"channel": "cash", "amount": "92.589", "csrf_token": token})
    html = cashier.get(page).get_data(as_text=True)
    assert 'data-testid="paid"' in html
    assert cashier.get(f"/api/v1/invoices/{billed_visit}/vietqr").status_code == 409
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, billed_visit)
        assert (invoice.status, invoice.amount_paid) == ("paid", Decimal("192589"))
        pays = session.scalars(select(AuditRecord).where(AuditRecord.action == "pay")).all()
        assert [row.outcome for row in pays] == ["failure", "success", "success"]
        fhir_invoice = store.read(session, "Invoice", invoice.invoice_resource_id).resource
    assert fhir_invoice["status"] == "balanced"


@pytest.mark.parametrize("amount", ["-5000", "1000.5", "0", "abc", "", 1.5, None, True])
def test_a_negative_or_fractional_amount_is_not_money(amount):
    with pytest.raises(InvalidPayment) as caught:
        whole_dong(amount, "amount")
    assert "amount" in caught.value.fields


def test_a_fractional_desk_payment_changes_nothing(app, billed_visit):
    with get_database(app).session_scope() as session, pytest.raises(InvalidPayment):
        record_desk_payment(session, billed_visit, channel="cash", amount="1000.5", cashier="thungan")
    with get_database(app).session_scope() as session:
        assert session.get(Invoice, billed_visit).amount_paid == 0


def test_the_cashier_adds_and_voids_charges_with_a_reason(app, bank, cashier, billed_visit, encounter):
    page = f"/billing/invoices/{billed_visit}"
    token = csrf_token(cashier, page)
    cashier.post(
        f"/billing/encounters/{encounter}/charges",
        data={"item_code": "XN01", "quantity": "1", "reason": "", "csrf_token": token},
    )
    cashier.post(
        f"/billing/encounters/{encounter}/charges",
        data={"item_code": "XN01", "quantity": "1", "reason": "Bác sĩ chỉ định thêm", "csrf_token": token},
    )
    html = cashier.get(page).get_data(as_text=True)
    assert "Tổng phân tích tế bào máu" in html
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, billed_visit)
        added = next(line for line in invoice.lines if line.code == "XN01")
        charge_id = added.charge_id
    cashier.post(f"/billing/charges/{charge_id}/void", data={"reason": "Nhập nhầm", "csrf_token": token})
    html = cashier.get(page).get_data(as_text=True)
    assert "Nhập nhầm" in html
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, billed_visit)
        assert "XN01" not in [line.code for line in invoice.lines]
        audit = session.scalars(select(AuditRecord).where(AuditRecord.entity_type == "ChargeItem")).all()
        assert [(row.action, row.outcome) for row in audit] == [
            ("create", "failure"),
            ("create", "success"),
            ("void", "success"),
        ]
        assert "Bác sĩ chỉ định thêm" in audit[1].detail


def test_the_patient_sees_their_own_invoice_and_qr_and_no_one_elses(
    app, bank, client, make_user, make_token, make_patient, billed_visit, patient
):
    other = make_patient(name="Lê Văn Khác")
    owner = make_user("patient", username="benhnhan")
    stranger = make_user("patient", username="nguoila")
    with get_database(app).session_scope() as session:
        session.get(User, owner.id).patient_id = patient
        session.get(User, stranger.id).patient_id = other
    login(client, "benhnhan")
    html = client.get(f"/my/invoices/{billed_visit}").get_data(as_text=True)
    assert "192.589\u00a0₫" in html
    assert f"/billing/invoices/{billed_visit}/vietqr.svg" in html
    assert client.get(f"/billing/invoices/{billed_visit}/vietqr.png").status_code == 200
    assert f"/my/invoices/{billed_visit}" in client.get("/my/invoices").get_data(as_text=True)
    token = make_token(stranger, "patient/*.read")
    denied = client.get(
        f"/api/v1/invoices/{billed_visit}/vietqr", headers={"Authorization": f"Bearer {token}"}
    )
    assert denied.status_code == 403
    mine = make_token(owner, "patient/*.read")
    allowed = client.get(
        f"/api/v1/invoices/{billed_visit}/vietqr", headers={"Authorization": f"Bearer {mine}"}
    )
    assert allowed.get_json()["amount"] == "192589"
    client.post("/logout", data={"csrf_token": csrf_token(client, "/my/invoices")})
    login(client, "nguoila")
    assert client.get(f"/my/invoices/{billed_visit}").status_code == 403
    with get_database(app).session_scope() as session:
        denials = session.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).all()
        assert {row.patient_id for row in denials} == {patient}


def test_the_vietqr_endpoint_is_documented(client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert "/api/v1/invoices/{invoice_id}/vietqr" in document["paths"]
    assert "/api/v1/payments/notifications" in document["paths"]


def test_a_refund_needs_a_reason_reopens_the_invoice_and_lets_charges_change(
    app, bank, cashier, billed_visit, encounter
):
    page = f"/billing/invoices/{billed_visit}"
    token = csrf_token(cashier, page)
    cashier.post(page + "/payments", data={"channel": "cash", "amount": "192589", "csrf_token": token})
    with get_database(app).session_scope() as session:
        tablets = next(
            line.charge_id for line in session.get(Invoice, billed_visit).lines if line.code == "TH01"
        )
    locked = cashier.post(
        f"/billing/charges/{tablets}/void", data={"reason": "Trả lại thuốc", "csrf_token": token}
    )
    assert locked.status_code == 302
    cashier.post(
        page + "/refunds", data={"channel": "cash", "amount": "2469", "reason": "", "csrf_token": token}
    )
    cashier.post(
        page + "/refunds",
        data={"channel": "cash", "amount": "999999", "reason": "Quá nhiều", "csrf_token": token},
    )
    cashier.post(
        page + "/refunds",
        data={"channel": "cash", "amount": "2469", "reason": "Trả lại thuốc", "csrf_token": token},
    )
    cashier.post(f"/billing/charges/{tablets}/void", data={"reason": "Trả lại thuốc", "csrf_token": token})
    html = cashier.get(page).get_data(as_text=True)
    assert 'data-testid="refund"' in html
    assert "Trả lại thuốc" in html
    with get_database(app).session_scope() as session:
        invoice = session.get(Invoice, billed_visit)
        # Without the tablets the fund's 9.876 ₫ and the patient's 2.469 ₫ are gone; what was kept is what is owed.
        assert (invoice.amount_due, invoice.amount_paid, invoice.status) == (
            Decimal("190120"),
            Decimal("190120"),
            "paid",
        )
        refunds = session.scalars(select(AuditRecord).where(AuditRecord.action == "refund")).all()
        assert [row.outcome for row in refunds] == ["failure", "failure", "success"]
        voids = session.scalars(select(AuditRecord).where(AuditRecord.action == "void")).all()
        assert [row.outcome for row in voids] == ["failure", "success"]


def test_opening_an_unchanged_invoice_writes_no_new_version(app, billed_visit, encounter):
    with get_database(app).session_scope() as session:
        before = store.read(
            session, "Invoice", session.get(Invoice, billed_visit).invoice_resource_id
        ).version_id
        open_invoice(session, encounter, DISTRICT)
        open_invoice(session, encounter, DISTRICT)
        after = store.read(
            session, "Invoice", session.get(Invoice, billed_visit).invoice_resource_id
        ).version_id
    assert after == before


def test_a_card_registered_elsewhere_follows_the_referral_rules(app, prices, patient, encounter):
    from billing.rules import FacilityLevel

    central = Facility(code="01001", level=FacilityLevel.SPECIALIZED)
    with get_database(app).session_scope() as session:
        _card(session, patient, facility="79001")
        _charge_visit(session, patient, encounter, ("SA01", 2))
        # Self-referred outpatient care at a central hospital: the fund pays nothing in 2025.
        invoice = open_invoice(session, encounter, central)
        assert (invoice.fund, invoice.amount_due) == (0, invoice.total)
        # The same card at its own registered facility is paid at its level (80%).
        assert open_invoice(session, encounter, Facility(code="79001")).fund == Decimal("360480")


def test_a_quantity_of_ten_reads_10_on_the_invoice_not_an_exponent(app, client, make_user, invoice):
    login(client, make_user("cashier", site="DIST").username)
    html = client.get(f"/billing/invoices/{invoice.id}").get_data(as_text=True)
    assert "1E+1" not in html
    assert '<td class="num">10</td>' in html
