"""CCCD numbers are checked by the national rules."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from his.identifiers import InvalidNationalId, validate_cccd


@pytest.mark.parametrize(
    ("number", "birth", "sex"),
    [
        ("001085012345", date(1985, 3, 14), "male"),  # Hà Nội, 1900s male
        ("079192004321", date(1992, 7, 2), "female"),  # TP.HCM, 1900s female
        ("048205000001", date(2005, 1, 1), "male"),  # Đà Nẵng, 2000s male
        ("092321999999", date(2021, 5, 9), "female"),  # Cần Thơ, 2000s female
    ],
)
def test_valid_numbers_pass(number, birth, sex):
    assert validate_cccd(number, birth_date=birth, sex=sex) == number


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("00108501234", "12 digits"),
        ("0010850123456", "12 digits"),
        ("00108501234a", "12 digits"),
        ("999085012345", "province"),
        ("003085012345", "province"),  # 003 is not a province code
    ],
)
def test_malformed_numbers_say_what_is_wrong(number, message):
    with pytest.raises(InvalidNationalId, match=message):
        validate_cccd(number)


def test_the_century_digit_must_match_the_birth_year():
    with pytest.raises(InvalidNationalId, match="date of birth"):
        validate_cccd("001285012345", birth_date=date(1985, 3, 14))


def test_the_sex_digit_must_match():
    with pytest.raises(InvalidNationalId, match="sex"):
        validate_cccd("001185012345", birth_date=date(1985, 3, 14), sex="male")


@given(
    province=st.sampled_from(["001", "079", "048", "092", "031"]),
    birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)),
    female=st.booleans(),
    tail=st.integers(min_value=0, max_value=999_999),
)
def test_any_consistent_number_is_accepted(province, birth, female, tail):
    century_digit = {19: 0, 20: 2}[birth.year // 100] + int(female)
    number = f"{province}{century_digit}{birth.year % 100:02d}{tail:06d}"
    assert validate_cccd(number, birth_date=birth, sex="female" if female else "male") == number
