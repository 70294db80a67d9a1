"""BHYT cards are read by the national format and refused with the gateway's own reason codes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.bhyt import (
    CARD_CODE_PATTERN,
    CardBenefitInvalid,
    CardCodeMalformed,
    CardExpired,
    CardProvinceInvalid,
    FacilityCodeInvalid,
    InvalidCard,
    Referral,
    benefit_level,
    benefit_rate,
    ensure_valid_on,
    facility_province,
    read_card,
    referral_status,
    validate_card_code,
)
from billing.rules import NoRuleInForce, rules_on


def test_a_card_is_read_into_its_parts():
    card = read_card(
        "DN4797912345678",
        valid_from=date(2025, 1, 1),
        valid_to=date(2025, 12, 31),
        registered_facility="79024",
    )
    assert (card.group, card.benefit_digit, card.province, card.social_insurance_number) == (
        "DN",
        4,
        "79",
        "7912345678",
    )
    assert card.registered_facility == "79024"
    assert facility_province(card.registered_facility) == "79"


def test_a_code_typed_with_spaces_and_lower_case_is_accepted():
    assert validate_card_code(" dn 4 79 79123 45678 ") == "DN4797912345678"


@pytest.mark.parametrize(
    ("code", "error", "gateway", "says"),
    [
        ("DN479791234567", CardCodeMalformed, "051", "15 characters"),
        ("DN47979123456789", CardCodeMalformed, "051", "15 characters"),
        ("D14797912345678", CardCodeMalformed, "051", "beneficiary group"),
        ("DN6797912345678", CardBenefitInvalid, "053", "benefit level"),
        ("DN0797912345678", CardBenefitInvalid, "053", "benefit level"),
        ("DNX797912345678", CardBenefitInvalid, "053", "benefit level"),
        ("DN4007912345678", CardProvinceInvalid, "052", "issuing province"),
        ("DN4997912345678", CardProvinceInvalid, "052", "issuing province"),
        ("DN4A97912345678", CardProvinceInvalid, "052", "issuing province"),
        ("DN479791234567A", CardCodeMalformed, "051", "social-insurance number"),
    ],
)
def test_a_bad_code_names_what_is_wrong_and_the_gateway_code(code, error, gateway, says):
    with pytest.raises(error, match=says) as caught:
        validate_card_code(code)
    problem = caught.value
    assert isinstance(problem, InvalidCard)
    assert problem.status == 422
    assert problem.to_dict()["gateway_code"] == gateway
    assert says in problem.fields["card_number"]


@pytest.mark.parametrize("province", ["01", "79", "48", "92", "31", "97", "98"])
def test_known_provinces_are_accepted(province):
    assert validate_card_code(f"HT3{province}1234567890")[3:5] == province


@given(
    group=st.from_regex(r"[A-Z]{2}", fullmatch=True),
    digit=st.integers(min_value=1, max_value=5),
    province=st.sampled_from(sorted(rules_on(date(2025, 1, 1)).province_codes)),
    number=st.from_regex(r"[0-9]{10}", fullmatch=True),
)
def test_every_code_of_the_national_format_with_a_known_province_is_accepted(group, digit, province, number):
    code = f"{group}{digit}{province}{number}"
    assert CARD_CODE_PATTERN.fullmatch(code)
    assert validate_card_code(code) == code


def test_validity_dates_include_both_ends():
    card = read_card("DN4797912345678", valid_from=date(2025, 1, 1), valid_to=date(2025, 12, 31))
    ensure_valid_on(card, date(2025, 1, 1))
    ensure_valid_on(card, date(2025, 12, 31))
    with pytest.raises(CardExpired) as caught:
        ensure_valid_on(card, date(2026, 1, 1))
    assert caught.value.to_dict()["gateway_code"] == "010"
    with pytest.raises(CardExpired):
        ensure_valid_on(card, date(2024, 12, 31))


def test_dates_in_the_wrong_order_are_refused():
    with pytest.raises(InvalidCard, match="end date") as caught:
        read_card("DN4797912345678", valid_from=date(2025, 12, 31), valid_to=date(2025, 1, 1))
    assert "valid_to" in caught.value.fields


@pytest.mark.parametrize("facility", ["7902", "790245", "79-24"])
def test_a_registered_facility_has_five_characters(facility):
    with pytest.raises(FacilityCodeInvalid) as caught:
        read_card("DN4797912345678", registered_facility=facility)
    assert "registered_facility" in caught.value.fields


@pytest.mark.parametrize(
    ("digit", "rate"),
    [(1, "1.00"), (2, "1.00"), (3, "0.95"), (4, "0.80"), (5, "1.00")],
)
def test_benefit_rate_follows_the_digit(digit, rate):
    card = read_card(f"DN{digit}797912345678")
    assert benefit_rate(card, rules_on(date(2025, 6, 1))) == Decimal(rate)


@pytest.mark.parametrize("group", ["CN", "LH"])
def test_near_poor_and_lh_move_to_level_2_from_2026(group):
    card = read_card(f"{group}3797912345678")
    assert benefit_level(card, rules_on(date(2025, 12, 31))) == 3
    assert benefit_rate(card, rules_on(date(2025, 12, 31))) == Decimal("0.95")
    assert benefit_level(card, rules_on(date(2026, 1, 1))) == 2
    assert benefit_rate(card, rules_on(date(2026, 1, 1))) == Decimal("1.00")


def test_other_groups_keep_their_digit_in_2026():
    assert benefit_level(read_card("HT3797912345678"), rules_on(date(2026, 3, 1))) == 3


def test_referral_status_comes_from_the_registered_facility():
    card = read_card("DN4797912345678", registered_facility="79024")
    assert referral_status(card, facility_code="79024") is Referral.REGISTERED
    assert referral_status(card, facility_code="01001") is Referral.SELF_REFERRED
    assert referral_status(card, facility_code="01001", has_referral=True) is Referral.REFERRED
    assert referral_status(card, facility_code="01001", emergency=True) is Referral.EMERGENCY


@pytest.mark.parametrize(
    ("day", "salary"),
    [
        (date(2023, 6, 30), "1490000"),
        (date(2023, 7, 1), "1800000"),
        (date(2024, 6, 30), "1800000"),
        (date(2024, 7, 1), "2340000"),
        (date(2026, 6, 30), "2340000"),
        (date(2026, 7, 1), "2530000"),
    ],
)
def test_base_salary_is_looked_up_by_the_visit_date(day, salary):
    rules = rules_on(day)
    assert rules.base_salary == Decimal(salary)
    assert rules.low_cost_visit_limit == Decimal(salary) * Decimal("0.15")
    assert rules.copay_exemption_threshold == Decimal(salary) * 6


def test_the_2024_limits_are_the_published_figures():
    rules = rules_on(date(2025, 1, 1))
    assert rules.low_cost_visit_limit == Decimal("351000")
    assert rules.copay_exemption_threshold == Decimal("14040000")


def test_a_date_before_any_rule_is_refused():
    with pytest.raises(NoRuleInForce) as caught:
        rules_on(date(2010, 1, 1))
    assert caught.value.fields == {"base_salary": "2010-01-01"}
