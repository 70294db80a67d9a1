"""RFC 8785 canonical JSON, checked against the RFC's own examples."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from his.records.canonical import NotCanonicalizable, canonicalize, canonicalize_text, number


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (333333333.33333329, "333333333.3333333"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (0.000001234, "0.000001234"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (-1e-7, "-1e-7"),
        (9007199254740991, "9007199254740991"),
        (Decimal("36.80"), "36.8"),
        (295147905179352830000, "295147905179352830000"),
    ],
)
def test_numbers_are_written_as_ecmascript_writes_them(value: float | int | Decimal, text: str) -> None:
    assert number(value) == text


def test_rfc_8785_example_object() -> None:
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize_text(source) == expected.encode("utf-8")


def test_keys_sort_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew",
        "1": "One",
        "\U0001f600": "Emoji",
        "\u0080": "Control",
        "\u00f6": "Latin",
    }
    order = [k for k in value]
    text = canonicalize(value).decode()
    positions = sorted(order, key=lambda k: text.index(canonicalize(k).decode() + ":"))
    assert positions == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_non_json_values_are_refused() -> None:
    for bad in (math.nan, math.inf, {1: "x"}, {"a": {1, 2}}):
        with pytest.raises(NotCanonicalizable):
            canonicalize(bad)
