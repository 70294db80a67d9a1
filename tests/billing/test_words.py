"""Amounts in Vietnamese words, by the common reading rules (mốt, lăm, lẻ/linh, mươi, nghìn, triệu, tỷ)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.words import amount_in_words, number_in_words


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "không"),
        (1, "một"),
        (5, "năm"),
        (10, "mười"),
        (11, "mười một"),
        (14, "mười bốn"),
        (15, "mười lăm"),
        (20, "hai mươi"),
        (21, "hai mươi mốt"),
        (25, "hai mươi lăm"),
        (55, "năm mươi lăm"),
        (91, "chín mươi mốt"),
        (100, "một trăm"),
        (101, "một trăm lẻ một"),
        (105, "một trăm lẻ năm"),
        (110, "một trăm mười"),
        (111, "một trăm mười một"),
        (115, "một trăm mười lăm"),
        (121, "một trăm hai mươi mốt"),
        (1000, "một nghìn"),
        (1001, "một nghìn không trăm lẻ một"),
        (1010, "một nghìn không trăm mười"),
        (1021, "một nghìn không trăm hai mươi mốt"),
        (10000, "mười nghìn"),
        (15000, "mười lăm nghìn"),
        (150000, "một trăm năm mươi nghìn"),
        (105000, "một trăm lẻ năm nghìn"),
        (1000000, "một triệu"),
        (1000001, "một triệu không trăm lẻ một"),
        (1005000, "một triệu không trăm lẻ năm nghìn"),
        (2340500, "hai triệu ba trăm bốn mươi nghìn năm trăm"),
        (21000000, "hai mươi mốt triệu"),
        (1000000000, "một tỷ"),
        (2005000000, "hai tỷ không trăm lẻ năm triệu"),
        (999999999999, "chín trăm chín mươi chín tỷ chín trăm chín mươi chín triệu chín trăm chín mươi chín nghìn chín trăm chín mươi chín"),
    ],
)  # fmt: skip
def test_numbers_read_as_vietnamese_say_them(number, words):
    assert number_in_words(number) == words


def test_the_north_may_say_linh_for_a_zero_tens_digit():
    assert number_in_words(105, zero_tens="linh") == "một trăm linh năm"
    assert number_in_words(1005000, zero_tens="linh") == "một triệu không trăm linh năm nghìn"


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (Decimal(0), "Không đồng"),
        (Decimal(150000), "Một trăm năm mươi nghìn đồng"),
        (Decimal("2340500.000"), "Hai triệu ba trăm bốn mươi nghìn năm trăm đồng"),
        (Decimal("192588.5"), "Một trăm chín mươi hai nghìn năm trăm tám mươi chín đồng"),
        (1005000, "Một triệu không trăm lẻ năm nghìn đồng"),
    ],
)
def test_an_amount_is_a_sentence_in_whole_dong(amount, words):
    assert amount_in_words(amount) == words


@pytest.mark.parametrize("number", [-1, 10**12])
def test_numbers_out_of_range_are_refused(number):
    with pytest.raises(ValueError, match="out of range"):
        number_in_words(number)


def test_only_le_or_linh_is_accepted_for_a_zero_tens_digit():
    with pytest.raises(ValueError, match="zero_tens"):
        number_in_words(105, zero_tens="lẽ")
