"""National prescription codes: format, randomness, uniqueness, type and case."""

from __future__ import annotations

import re

import pytest

from his.errors import ValidationFailed
from his.records.codes import new_code, parse_code, prescription_type


def test_new_codes_have_the_national_shape_and_type_letter() -> None:
    code = new_code("01234", "C", lambda _r: False)
    assert re.fullmatch(r"01234[0-9a-z]{7}-C", str(code))
    assert len(str(code)) == 14
    assert str(new_code("01234", "N", lambda _r: False)).endswith("-N")


def test_new_codes_are_random_not_sequential() -> None:
    codes = {new_code("01234", "C", lambda _r: False).random for _ in range(200)}
    assert len(codes) == 200


def test_a_taken_code_is_drawn_again() -> None:
    used = {new_code("01234", "C", lambda _r: False).random}
    seen: list[str] = []

    def taken(random: str) -> bool:
        seen.append(random)
        return len(seen) == 1

    code = new_code("01234", "C", taken)
    assert len(seen) == 2
    assert code.random == seen[1]
    assert code.random not in used


def test_type_follows_the_strongest_drug_class() -> None:
    assert prescription_type(["C", "N", "H"]) == "N"
    assert prescription_type(["C", "H"]) == "H"
    assert prescription_type(["C"]) == "C"


@pytest.mark.parametrize(
    ("typed", "emitted"),
    [
        ("01234ab12cd9-c", "01234ab12cd9-C"),
        (" 01234AB12CD9-n ", "01234ab12cd9-N"),
        ("01234ab12cd9-y", "01234ab12cd9-T"),
    ],
)
def test_lower_case_codes_are_accepted_and_emitted_upper_case(typed: str, emitted: str) -> None:
    assert str(parse_code(typed)) == emitted


@pytest.mark.parametrize(
    "bad", ["", "01234ab12cd9", "01234ab12cd9-X", "0123ab12cd9-C", "01234ab12cd99-C", "01234ab_2cd9-C"]
)
def test_malformed_codes_are_refused(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_code(bad)


def test_facility_code_must_have_five_characters() -> None:
    with pytest.raises(ValidationFailed):
        new_code("1234", "C", lambda _r: False)
