"""Vietnamese dosing text, quantities and the prescription's day and child rules."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from his.errors import ValidationFailed
from his.records.catalogue import seed_drugs
from his.records.dosing import (
    DosageNotUnderstood,
    PatientFacts,
    age_in_months,
    check_rules,
    parse_dosage,
    quantity,
    unit_matches,
)

DRUGS = seed_drugs()
TODAY = date(2026, 11, 23)
ADULT = PatientFacts(birth_date=date(1980, 5, 1))


@pytest.mark.parametrize(
    ("text", "per_day", "times"),
    [
        ("sáng 1 viên, chiều 1 viên", Decimal(2), 2),
        ("sang 1 vien, chieu 1 vien", Decimal(2), 2),
        ("Sáng 2 viên, trưa 1 viên, tối 2 viên", Decimal(5), 3),
        ("sáng 1/2 viên, tối 1/2 viên", Decimal(1), 2),
        ("tối 1 viên", Decimal(1), 1),
        ("Ngày 3 lần, mỗi lần 5 ml", Decimal(15), 3),
        ("uống 1 viên x 3 lần/ngày", Decimal(3), 3),
        ("mỗi lần 2 gói, ngày 2 lần", Decimal(4), 2),
        ("2 lần/ngày, mỗi lần 1,5 viên", Decimal(3), 2),
        ("sáng nửa viên", Decimal("0.5"), 1),
    ],
)
def test_vietnamese_dosing_is_understood(text: str, per_day: Decimal, times: int) -> None:
    dosage = parse_dosage(text)
    assert dosage.per_day == per_day
    assert dosage.times_per_day == times


@pytest.mark.parametrize("text", ["", "uống khi đau", "sáng 0 viên", "ngày 3 lần", "1 viên x 0 lần/ngày"])
def test_dosing_without_amount_or_frequency_is_refused(text: str) -> None:
    with pytest.raises(DosageNotUnderstood):
        parse_dosage(text)


def test_quantity_is_dose_times_days_rounded_up_to_whole_units() -> None:
    paracetamol = DRUGS["VTS0001"]
    assert quantity(parse_dosage("sáng 1 viên, chiều 1 viên"), 5, paracetamol) == 10
    assert quantity(parse_dosage("sáng 1/2 viên, tối 1/2 viên"), 5, paracetamol) == 5
    assert quantity(parse_dosage("sáng 1/2 viên"), 5, paracetamol) == 3


def test_quantity_of_a_syrup_counts_bottles() -> None:
    syrup = DRUGS["VTS0003"]  # 60 ml a bottle
    dosage = parse_dosage("ngày 3 lần, mỗi lần 5 ml")
    assert quantity(dosage, 5, syrup) == 2  # 75 ml
    assert quantity(dosage, 4, syrup) == 1  # 60 ml
    assert unit_matches(dosage, syrup)
    assert not unit_matches(parse_dosage("ngày 3 lần, mỗi lần 5 viên"), syrup)


def test_thirty_days_is_the_general_limit() -> None:
    check_rules([DRUGS["VTS0067"]], 30, ADULT, TODAY)
    with pytest.raises(ValidationFailed) as caught:
        check_rules([DRUGS["VTS0067"]], 60, ADULT, TODAY)
    assert caught.value.fields["days"] == "A prescription may cover at most 30 days."


def test_narcotics_are_limited_to_seven_days() -> None:
    check_rules([DRUGS["VTS0014"]], 7, ADULT, TODAY)
    with pytest.raises(ValidationFailed) as caught:
        check_rules([DRUGS["VTS0014"]], 10, ADULT, TODAY)
    assert "7 days" in caught.value.fields["days"]


def test_a_child_under_72_months_needs_weight_and_accompanying_adult() -> None:
    child = PatientFacts(birth_date=date(2023, 1, 10))
    with pytest.raises(ValidationFailed) as caught:
        check_rules([DRUGS["VTS0003"]], 3, child, TODAY)
    assert set(caught.value.fields) == {"weight", "guardian_name"}
    check_rules(
        [DRUGS["VTS0003"]],
        3,
        PatientFacts(birth_date=date(2023, 1, 10), weight_kg=Decimal("14.5"), guardian_name="Nguyễn Văn Bố"),
        TODAY,
    )
    six_years = PatientFacts(birth_date=date(2020, 11, 23))
    check_rules([DRUGS["VTS0001"]], 3, six_years, TODAY)


def test_age_in_months_counts_completed_months() -> None:
    assert age_in_months(date(2020, 11, 24), TODAY) == 71
    assert age_in_months(date(2020, 11, 23), TODAY) == 72
    with pytest.raises(ValidationFailed) as caught:
        check_rules([DRUGS["VTS0001"]], 0, PatientFacts(birth_date=None), TODAY)
    assert set(caught.value.fields) == {"days", "birth_date"}
