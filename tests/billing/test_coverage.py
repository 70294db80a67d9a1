"""BHYT cards: entered by hand or confirmed by the insurance gateway, kept as the patient's Coverage."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from billing.bhyt import CardBenefitInvalid, CardCodeMalformed, CardExpired, CardProvinceInvalid
from billing.coverage import CardEntry, active_coverage, register_card
from billing.gateway import CardNotFound, EligibilityGateway, GatewayUnavailable
from billing.models import CoverageRecord
from fhir import services as store
from his.db import get_database
from his.models import AuditRecord
from tests.conftest import csrf_token, login

from .fakes import FakeInsuranceGateway, Insured, serve

AN = Insured(
    card="DN4010123456789",
    cccd="001080012345",
    name="Nguyễn Văn An",
    birth="17/05/1980",
    facility="01234",
    valid_from="01/01/2025",
    valid_to="31/12/2026",
    five_years_from="01/01/2020",
)
BINH = Insured(
    card="HT3790000000001",
    cccd="079055000001",
    name="Trần Thị Bình",
    birth="02/03/1955",
    facility="79001",
    valid_from="01/01/2020",
    valid_to="31/12/2020",
)
BIRTH = date(1980, 5, 17)


@pytest.fixture
def gateway_url():
    fake = FakeInsuranceGateway(people=[AN, BINH], expired={BINH.card})
    with serve(fake) as url:
        yield url


@pytest.fixture
def desk(app, client, make_user, gateway_url):
    app.config["VETINH_BHYT_GATEWAY_URL"] = gateway_url
    make_user("cashier", username="thungan")
    login(client, "thungan")
    return client


def test_a_card_entered_by_hand_becomes_the_patients_coverage(app, patient):
    entry = CardEntry("dn 401 0123456789", date(2025, 1, 1), date(2025, 12, 31), "01234")
    with get_database(app).session_scope() as session:
        record = register_card(session, patient, entry, visit_date=date(2025, 9, 10))
        resource = store.read(session, "Coverage", record.coverage_resource_id).resource
        assert active_coverage(session, patient, date(2025, 9, 10)).card_code == "DN4010123456789"
        assert active_coverage(session, patient, date(2026, 1, 1)) is None
    assert resource["identifier"] == [
        {"system": "http://fhir.ehealth.gov.vn/core/sid/insurance_number", "value": "DN4010123456789"}
    ]
    assert resource["beneficiary"] == {"reference": f"Patient/{patient}"}
    assert resource["period"] == {"start": "2025-01-01", "end": "2025-12-31"}


def test_a_new_card_replaces_the_old_one(app, patient):
    with get_database(app).session_scope() as session:
        old = register_card(session, patient, CardEntry("DN4010123456789"), visit_date=date(2025, 9, 10))
        new = register_card(session, patient, CardEntry("HS4010123456789"), visit_date=date(2025, 9, 10))
        assert old.status == "cancelled"
        assert store.read(session, "Coverage", old.coverage_resource_id).resource["status"] == "cancelled"
        assert active_coverage(session, patient, date(2025, 9, 10)).id == new.id


def test_a_bad_card_says_exactly_what_is_wrong_and_writes_nothing(app, patient):
    bad = [
        ("DN401012345", CardCodeMalformed, "051"),
        ("DN6010123456789", CardBenefitInvalid, "053"),
        ("DN4990123456789", CardProvinceInvalid, "052"),
    ]
    with get_database(app).session_scope() as session:
        for code, error, gateway_code in bad:
            with pytest.raises(error) as caught:
                register_card(session, patient, CardEntry(code), visit_date=date(2025, 9, 10))
            assert caught.value.extra["gateway_code"] == gateway_code
        assert session.scalars(select(CoverageRecord)).all() == []


def test_an_expired_card_is_refused_for_the_visit(app, patient):
    entry = CardEntry("DN4010123456789", date(2024, 1, 1), date(2024, 12, 31))
    with get_database(app).session_scope() as session, pytest.raises(CardExpired):
        register_card(session, patient, entry, visit_date=date(2025, 1, 1))


@pytest.mark.parametrize("number", [AN.card, AN.cccd])
def test_the_gateway_confirms_a_card_by_card_code_or_cccd(gateway_url, number):
    result = EligibilityGateway(gateway_url).check(number, full_name=AN.name, birth_date=BIRTH)
    assert result.result_code == "000"
    assert result.card_code == AN.card
    assert (result.valid_from, result.valid_to) == (date(2025, 1, 1), date(2026, 12, 31))
    assert result.registered_facility == "01234"
    assert result.five_years_from == date(2020, 1, 1)
    result.raise_for_code()


@pytest.mark.parametrize(
    ("number", "error", "code"),
    [
        (BINH.card, CardExpired, "010"),
        ("DN4010000000000", CardNotFound, "050"),
        ("079099999999", CardNotFound, "050"),
        ("DN40101234", CardCodeMalformed, "051"),
        ("DN4990123456789", CardProvinceInvalid, "052"),
        ("DN7010123456789", CardBenefitInvalid, "053"),
    ],
)
def test_the_gateways_refusals_keep_their_codes(gateway_url, number, error, code):
    result = EligibilityGateway(gateway_url).check(number, full_name="X", birth_date=BIRTH)
    assert result.result_code == code
    with pytest.raises(error) as caught:
        result.raise_for_code()
    assert caught.value.extra["gateway_code"] == code


def test_an_unreachable_or_unconfigured_gateway_is_a_clear_error():
    with serve(lambda environ, start: []) as url:
        pass  # the server is gone: nothing listens on this port any more
    with pytest.raises(GatewayUnavailable):
        EligibilityGateway(url, timeout=2).check(AN.card, full_name=AN.name, birth_date=BIRTH)
    with pytest.raises(GatewayUnavailable):
        EligibilityGateway(None).check(AN.card, full_name=AN.name, birth_date=BIRTH)


def test_the_desk_checks_a_cccd_with_the_gateway_and_keeps_the_card(app, desk, make_patient):
    patient = make_patient(national_id=AN.cccd)
    page = f"/billing/patients/{patient}/coverage"
    response = desk.post(page + "/check", data={"number": AN.cccd, "csrf_token": csrf_token(desk, page)})
    assert response.status_code == 302
    html = desk.get(page).get_data(as_text=True)
    assert AN.card in html
    assert "000" in html
    with get_database(app).session_scope() as session:
        record = session.scalars(select(CoverageRecord)).one()
        assert (record.gateway_code, record.registered_facility) == ("000", "01234")
        audit = session.scalars(select(AuditRecord).where(AuditRecord.entity_type == "Coverage")).all()
        assert {row.action for row in audit} >= {"check", "read"}


def test_the_desk_sees_why_the_gateway_refused(app, desk, make_patient):
    patient = make_patient()
    page = f"/billing/patients/{patient}/coverage"
    desk.post(page + "/check", data={"number": "DN4990123456789", "csrf_token": csrf_token(desk, page)})
    html = desk.get(page).get_data(as_text=True)
    assert "Ký tự thứ 4–5 của mã thẻ không phải mã tỉnh cấp thẻ hợp lệ." in html
    with get_database(app).session_scope() as session:
        assert session.scalars(select(CoverageRecord)).all() == []


def test_only_desk_staff_enter_cards(app, client, make_user, patient):
    make_user("doctor", username="bacsi")
    login(client, "bacsi")
    page = f"/billing/patients/{patient}/coverage"
    token = csrf_token(client, "/prices")
    response = client.post(page, data={"card_code": AN.card, "csrf_token": token})
    assert response.status_code == 403
