"""Each invoice line is split between the fund and the patient by the rules of the visit date.

Worked examples use 2025 figures unless said otherwise: base salary 2,340,000 VND, so the
low-cost-visit limit is 15% = 351,000 and the exemption threshold 6 × = 14,040,000.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.bhyt import BhytCard, CardExpired, Referral, read_card
from billing.copay import (
    Coverage,
    InvalidCoverage,
    InvalidInvoiceLine,
    InvoiceLine,
    PriceMissing,
    Reason,
    split_invoice,
)
from billing.rules import CareSetting, FacilityLevel, rules_on

D = Decimal
VISIT = date(2025, 3, 10)


def card(code: str = "DN4797912345678") -> BhytCard:
    return read_card(
        code, valid_from=date(2020, 1, 1), valid_to=date(2030, 12, 31), registered_facility="79024"
    )


def item(price: str, quantity: str = "1", code: str = "X", **extra: object) -> InvoiceLine:
    return InvoiceLine(code=code, description=code, quantity=D(quantity), unit_price=D(price), **extra)


def amounts(split) -> tuple[Decimal, Decimal, Decimal]:
    return split.fund, split.copay, split.patient_full


def test_an_employee_pays_20_percent_of_an_ordinary_visit():
    # DN4 → 80%. Visit 50,600 + lab 200,000 + X-ray 150,000 = 400,600 ≥ 351,000.
    # Fund: 40,480 + 160,000 + 120,000 = 320,480; co-pay: 10,120 + 40,000 + 30,000 = 80,120.
    split = split_invoice(
        [item("50600", code="KHAM"), item("200000", code="XN"), item("150000", code="XQ")],
        Coverage(card()),
        VISIT,
    )
    assert [(line.fund, line.copay, line.patient_full) for line in split.lines] == [
        (D("40480.00"), D("10120.00"), D("0.00")),
        (D("160000.00"), D("40000.00"), D("0.00")),
        (D("120000.00"), D("30000.00"), D("0.00")),
    ]
    assert amounts(split) == (D("320480.00"), D("80120.00"), D("0.00"))
    assert split.total == D("400600.00")
    assert split.amount_due == D("80120")
    assert split.benefit_percent == 80
    assert split.reasons == frozenset()


@pytest.mark.parametrize(
    ("code", "fund", "copay"),
    [
        # 1,000,000 of covered cost at each benefit level, at the registered facility.
        ("TE1797912345678", "1000000.00", "0.00"),
        ("CB2797912345678", "1000000.00", "0.00"),
        ("HT3797912345678", "950000.00", "50000.00"),
        ("DN4797912345678", "800000.00", "200000.00"),
        ("QN5977912345678", "1000000.00", "0.00"),
    ],
)
def test_each_benefit_level(code, fund, copay):
    split = split_invoice([item("1000000")], Coverage(card(code)), VISIT)
    assert amounts(split) == (D(fund), D(copay), D("0.00"))


@pytest.mark.parametrize(
    ("total", "fund", "copay", "low_cost"),
    [
        ("350999", "350999.00", "0.00", True),  # below 351,000: the fund pays everything
        ("351000", "280800.00", "70200.00", False),  # at the limit: 80% (not "below")
        ("351001", "280800.80", "70200.20", False),
    ],
)
def test_low_cost_visit_boundary(total, fund, copay, low_cost):
    split = split_invoice([item(total)], Coverage(card()), VISIT)
    assert amounts(split) == (D(fund), D(copay), D("0.00"))
    assert (Reason.LOW_COST_VISIT in split.reasons) is low_cost


def test_low_cost_rule_counts_the_whole_visit_not_each_line():
    # Two lines of 200,000: each is below 351,000 but the visit (400,000) is not → 80%.
    split = split_invoice([item("200000"), item("200000")], Coverage(card()), VISIT)
    assert amounts(split) == (D("320000.00"), D("80000.00"), D("0.00"))


def test_low_cost_limit_follows_the_base_salary_of_the_visit_date():
    # 300,000: on 2024-06-30 the limit is 15% × 1,800,000 = 270,000 → 80% (240,000);
    # from 2024-07-01 it is 351,000 → 100%.
    before = split_invoice([item("300000")], Coverage(card()), date(2024, 6, 30))
    after = split_invoice([item("300000")], Coverage(card()), date(2024, 7, 1))
    assert before.fund == D("240000.00")
    assert after.fund == D("300000.00")
    # 360,000: 15% × 2,340,000 = 351,000 on 2026-06-30 → 288,000; 15% × 2,530,000 = 379,500 on 2026-07-01 → all.
    assert split_invoice([item("360000")], Coverage(card()), date(2026, 6, 30)).fund == D("288000.00")
    assert split_invoice([item("360000")], Coverage(card()), date(2026, 7, 1)).fund == D("360000.00")


def test_out_of_scope_items_are_paid_in_full_by_the_patient():
    # DN4: in-scope 500,000 → fund 400,000, co-pay 100,000; out-of-scope 300,000 → patient in full.
    split = split_invoice(
        [item("500000"), item("300000", code="NGOAI", in_scope=False)], Coverage(card()), VISIT
    )
    assert [(line.fund, line.copay, line.patient_full) for line in split.lines] == [
        (D("400000.00"), D("100000.00"), D("0.00")),
        (D("0.00"), D("0.00"), D("300000.00")),
    ]
    assert split.amount_due == D("400000")


def test_out_of_scope_items_do_not_count_towards_the_low_cost_limit():
    # Covered cost is 300,000 < 351,000 → 100% of it; the 300,000 out of scope stays the patient's.
    split = split_invoice([item("300000"), item("300000", in_scope=False)], Coverage(card()), VISIT)
    assert amounts(split) == (D("300000.00"), D("0.00"), D("300000.00"))


def test_level_5_pays_listed_out_of_scope_items():
    lines = [
        item("500000"),
        item("300000", in_scope=False, level5_covered=True),
        item("100000", in_scope=False),
    ]
    army = split_invoice(lines, Coverage(card("QN5977912345678")), VISIT)
    # QN5: 500,000 + 300,000 listed → fund 800,000; the unlisted 100,000 is still the patient's.
    assert amounts(army) == (D("800000.00"), D("0.00"), D("100000.00"))
    employee = split_invoice(lines, Coverage(card()), VISIT)
    # DN4: only the 500,000 is covered → fund 400,000, co-pay 100,000, full 400,000.
    assert amounts(employee) == (D("400000.00"), D("100000.00"), D("400000.00"))


def test_the_patient_pays_the_difference_above_the_insurance_price():
    # 2 × 250,000 = 500,000 at the hospital price; the fund recognises 2 × 200,000 = 400,000.
    # DN4 → fund 320,000, co-pay 80,000, difference 100,000 in full.
    split = split_invoice(
        [item("250000", quantity="2", insurance_unit_price=D("200000"))], Coverage(card()), VISIT
    )
    assert amounts(split) == (D("320000.00"), D("80000.00"), D("100000.00"))


def test_an_insurance_price_above_the_hospital_price_pays_no_more_than_charged():
    split = split_invoice([item("400000", insurance_unit_price=D("450000"))], Coverage(card()), VISIT)
    assert amounts(split) == (D("320000.00"), D("80000.00"), D("0.00"))


def test_payment_ratio_limits_what_the_fund_covers():
    # A stent at 10,000,000 covered at 50%: covered 5,000,000; HT3 → fund 4,750,000, co-pay 250,000,
    # the other 5,000,000 in full.
    split = split_invoice([item("10000000", payment_ratio=D("50"))], Coverage(card("HT3797912345678")), VISIT)
    assert amounts(split) == (D("4750000.00"), D("250000.00"), D("5000000.00"))


@pytest.mark.parametrize(
    ("level", "care", "day", "fund"),
    [
        # 10,000,000 self-referred, DN4 (80%):
        (FacilityLevel.SPECIALIZED, CareSetting.INPATIENT, VISIT, "3200000.00"),  # × 40% = 3,200,000
        (FacilityLevel.SPECIALIZED, CareSetting.OUTPATIENT, VISIT, "0.00"),  # not paid before 2026-07
        (FacilityLevel.BASIC, CareSetting.INPATIENT, VISIT, "8000000.00"),  # 100% of the level
        (FacilityLevel.BASIC, CareSetting.OUTPATIENT, VISIT, "0.00"),
        (FacilityLevel.PRIMARY, CareSetting.OUTPATIENT, VISIT, "8000000.00"),
        (FacilityLevel.SPECIALIZED, CareSetting.OUTPATIENT, date(2026, 7, 1), "4000000.00"),  # × 50%
        (FacilityLevel.BASIC, CareSetting.OUTPATIENT, date(2026, 7, 1), "4000000.00"),
        (FacilityLevel.SPECIALIZED, CareSetting.INPATIENT, date(2026, 7, 1), "3200000.00"),
    ],
)
def test_self_referral_shares(level, care, day, fund):
    coverage = Coverage(card(), referral=Referral.SELF_REFERRED, facility_level=level, care=care)
    split = split_invoice([item("10000000")], coverage, day)
    assert split.fund == D(fund)
    assert split.fund + split.copay == D("10000000.00")


@pytest.mark.parametrize("referral", [Referral.REGISTERED, Referral.REFERRED, Referral.EMERGENCY])
def test_in_network_and_emergency_care_keep_the_full_level(referral):
    coverage = Coverage(
        card(), referral=referral, facility_level=FacilityLevel.SPECIALIZED, care=CareSetting.INPATIENT
    )
    assert split_invoice([item("10000000")], coverage, VISIT).fund == D("8000000.00")


def test_self_referred_visits_get_no_low_cost_rule():
    # 100,000 at a primary facility without referral: 80% (80,000), not 100%.
    coverage = Coverage(card(), referral=Referral.SELF_REFERRED, facility_level=FacilityLevel.PRIMARY)
    split = split_invoice([item("100000")], coverage, VISIT)
    assert amounts(split) == (D("80000.00"), D("20000.00"), D("0.00"))


def test_referral_shares_can_be_overridden_by_settings():
    rules = rules_on(VISIT)
    changed = dict(rules.self_referral_rates)
    changed[(FacilityLevel.SPECIALIZED, CareSetting.OUTPATIENT)] = D("0.30")
    coverage = Coverage(card(), referral=Referral.SELF_REFERRED, facility_level=FacilityLevel.SPECIALIZED)
    split = split_invoice(
        [item("1000000")], coverage, VISIT, rules=rules.with_overrides(self_referral_rates=changed)
    )
    assert split.fund == D("240000.00")  # 1,000,000 × 80% × 30%


@pytest.mark.parametrize(
    ("copaid", "five_years", "fund", "exempt"),
    [
        ("14040000", True, "800000.00", False),  # equal to 6 × 2,340,000: not yet exempt
        ("14040000.01", True, "1000000.00", True),  # greater: the rest of the year is free
        ("20000000", False, "800000.00", False),  # less than five years of coverage: no exemption
        ("0", True, "800000.00", False),
    ],
)
def test_five_year_copay_exemption_threshold(copaid, five_years, fund, exempt):
    coverage = Coverage(card(), five_years_continuous=five_years, copaid_this_year=D(copaid))
    split = split_invoice([item("1000000")], coverage, VISIT)
    assert split.fund == D(fund)
    assert (Reason.COPAY_EXEMPTION in split.reasons) is exempt


def test_the_exemption_threshold_follows_the_base_salary():
    # 14,100,000 exceeds 6 × 2,340,000 = 14,040,000 but not 6 × 2,530,000 = 15,180,000.
    coverage = Coverage(card(), five_years_continuous=True, copaid_this_year=D("14100000"))
    assert split_invoice([item("1000000")], coverage, date(2026, 6, 30)).fund == D("1000000.00")
    assert split_invoice([item("1000000")], coverage, date(2026, 7, 1)).fund == D("800000.00")


def test_the_exemption_does_not_cover_out_of_scope_items():
    coverage = Coverage(card(), five_years_continuous=True, copaid_this_year=D("15000000"))
    split = split_invoice([item("1000000"), item("200000", in_scope=False)], coverage, VISIT)
    assert amounts(split) == (D("1000000.00"), D("0.00"), D("200000.00"))


def test_near_poor_pay_less_from_2026():
    # CN3: 95% in 2025 (co-pay 50,000 of 1,000,000), level 2 = 100% from 2026-01-01.
    near_poor = card("CN3797912345678")
    assert split_invoice([item("1000000")], Coverage(near_poor), date(2025, 12, 31)).copay == D("50000.00")
    assert split_invoice([item("1000000")], Coverage(near_poor), date(2026, 1, 1)).copay == D("0.00")


def test_amounts_are_rounded_as_xml_130_writes_them():
    # HT3 (95%). 0.5 × 12,345 = 6,172.50; fund 6,172.50 × 0.95 = 5,863.875 → 5,863.88, co-pay 308.62.
    # 400,000 → fund 380,000, co-pay 20,000. Total co-pay 20,308.62 → 20,309 đồng to collect.
    # A price of 33,333.3333 is written as DON_GIA 33,333.333; × 3 = 99,999.999 → 100,000.00.
    split = split_invoice(
        [item("12345", quantity="0.5"), item("400000"), item("33333.3333", quantity="3", in_scope=False)],
        Coverage(card("HT3797912345678")),
        VISIT,
    )
    first, _second, third = split.lines
    assert (first.total, first.fund, first.copay) == (D("6172.50"), D("5863.88"), D("308.62"))
    assert (third.unit_price, third.total) == (D("33333.333"), D("100000.00"))
    assert split.copay == D("20308.62")
    assert split.amount_due == D("120309")


def test_a_patient_without_a_card_pays_everything():
    split = split_invoice([item("50600"), item("200000", in_scope=False)], Coverage(None), VISIT)
    assert amounts(split) == (D("0.00"), D("0.00"), D("250600.00"))
    assert split.benefit_level is None


def test_an_expired_card_is_refused():
    expired = read_card("DN4797912345678", valid_from=date(2024, 1, 1), valid_to=date(2024, 12, 31))
    with pytest.raises(CardExpired):
        split_invoice([item("100000")], Coverage(expired), VISIT)


def test_a_line_without_a_price_is_flagged_not_billed_as_zero():
    line = InvoiceLine(code="SA-TIM", description="Siêu âm tim", quantity=D("1"), unit_price=None)
    with pytest.raises(PriceMissing) as caught:
        split_invoice([item("100000"), line], Coverage(card()), VISIT)
    assert caught.value.fields == {"lines[1].unit_price": "SA-TIM"}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (item("100000", quantity="0"), "lines[0].quantity"),
        (item("100000", quantity="-1"), "lines[0].quantity"),
        (item("-100000"), "lines[0].unit_price"),
        (item("100000", insurance_unit_price=D("-1")), "lines[0].unit_price"),
        (item("100000", payment_ratio=D("101")), "lines[0].payment_ratio"),
        (InvoiceLine(code="X", description="X", quantity=D("NaN"), unit_price=D("1")), "lines[0].quantity"),
    ],
)
def test_lines_that_cannot_be_billed_name_the_field(line, field):
    with pytest.raises(InvalidInvoiceLine) as caught:
        split_invoice([line], Coverage(card()), VISIT)
    assert field in caught.value.fields


@pytest.mark.parametrize("copaid", [D("-1"), D("NaN")])
def test_unusable_yearly_copayments_are_refused(copaid):
    with pytest.raises(InvalidCoverage) as caught:
        split_invoice([item("1")], Coverage(card(), copaid_this_year=copaid), VISIT)
    assert "copaid_this_year" in caught.value.fields


_money = st.decimals(min_value=0, max_value=50_000_000, places=3, allow_nan=False, allow_infinity=False)
_lines = st.builds(
    InvoiceLine,
    code=st.just("X"),
    description=st.just("X"),
    quantity=st.decimals(
        min_value=D("0.001"), max_value=1000, places=3, allow_nan=False, allow_infinity=False
    ),
    unit_price=_money,
    insurance_unit_price=st.none() | _money,
    payment_ratio=st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False),
    in_scope=st.booleans(),
    level5_covered=st.booleans(),
)
_coverages = st.builds(
    Coverage,
    card=st.none()
    | st.builds(
        lambda code: card(code),
        st.sampled_from(
            [
                "TE1797912345678",
                "CB2797912345678",
                "HT3797912345678",
                "CN3797912345678",
                "DN4797912345678",
                "QN5977912345678",
            ]
        ),
    ),
    referral=st.sampled_from(list(Referral)),
    facility_level=st.sampled_from(list(FacilityLevel)),
    care=st.sampled_from(list(CareSetting)),
    five_years_continuous=st.booleans(),
    copaid_this_year=st.decimals(
        min_value=0, max_value=30_000_000, places=2, allow_nan=False, allow_infinity=False
    ),
)
_days = st.dates(min_value=date(2021, 1, 1), max_value=date(2027, 12, 31))


@settings(max_examples=300)
@given(lines=st.lists(_lines, min_size=1, max_size=8), coverage=_coverages, day=_days)
def test_the_three_parts_always_make_the_line_total(lines, coverage, day):
    split = split_invoice(lines, coverage, day)
    for line in split.lines:
        assert line.fund + line.copay + line.patient_full == line.total
        assert min(line.fund, line.copay, line.patient_full) >= 0
        assert line.fund <= line.covered <= line.total
        assert line.total.as_tuple().exponent == -2
    assert split.fund + split.copay + split.patient_full == split.total
    if coverage.card is None:
        assert split.fund == 0
        assert split.patient_full == split.total


@given(lines=st.lists(_lines, min_size=1, max_size=5), coverage=_coverages, day=_days, more=_money)
def test_paying_more_co_payments_this_year_never_raises_what_the_patient_pays(lines, coverage, day, more):
    later = Coverage(
        coverage.card,
        referral=coverage.referral,
        facility_level=coverage.facility_level,
        care=coverage.care,
        five_years_continuous=coverage.five_years_continuous,
        copaid_this_year=coverage.copaid_this_year + more,
    )
    assert split_invoice(lines, later, day).patient_total <= split_invoice(lines, coverage, day).patient_total


@given(lines=st.lists(_lines, min_size=1, max_size=5), day=_days)
def test_a_registered_patient_of_level_1_never_co_pays(lines, day):
    split = split_invoice(lines, Coverage(card("TE1797912345678")), day)
    assert split.copay == 0
