"""Read amounts of money in Vietnamese words, as receipts and invoices print them ("Bằng chữ").

The common reading rules: 1 after a tens digit of 2–9 is "mốt" (hai mươi mốt), 5 after
any tens digit is "lăm" (mười lăm, hai mươi lăm), 10 is "mười" but 20–90 are
"… mươi", a zero tens digit before a unit is "lẻ" (or "linh", as the north says it:
một trăm lẻ năm), and every group of three digits after the first says its hundreds,
even zero (một triệu không trăm lẻ năm nghìn). Groups are nghìn, triệu, tỷ.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

_DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
_SCALES = ("", "nghìn", "triệu", "tỷ")
LARGEST = 10**12 - 1


def _three_digits(number: int, *, inner: bool, zero_tens: str) -> list[str]:
    """Read 0–999; an ``inner`` group says its zero hundreds ("không trăm")."""
    hundreds, rest = divmod(number, 100)
    tens, units = divmod(rest, 10)
    words: list[str] = []
    if hundreds or inner:
        words += [_DIGITS[hundreds], "trăm"]
    if tens == 0 and units and words:
        words.append(zero_tens)
    if tens == 1:
        words.append("mười")
    elif tens > 1:
        words += [_DIGITS[tens], "mươi"]
    if units == 1 and tens > 1:
        words.append("mốt")
    elif units == 5 and tens > 0:
        words.append("lăm")
    elif units:
        words.append(_DIGITS[units])
    return words


def number_in_words(number: int, *, zero_tens: str = "lẻ") -> str:
    """Read a whole number from 0 to 999 999 999 999 in lower-case Vietnamese words.

    ``zero_tens`` is "lẻ" (default) or "linh". Raises ValueError for a number out of
    that range or another ``zero_tens``.
    """
    if zero_tens not in {"lẻ", "linh"}:
        raise ValueError("zero_tens is 'lẻ' or 'linh'")
    if number < 0 or number > LARGEST:
        raise ValueError("number out of range")
    if number == 0:
        return _DIGITS[0]
    groups: list[int] = []
    while number:
        number, group = divmod(number, 1000)
        groups.append(group)
    top = len(groups) - 1
    words: list[str] = []
    for index in range(top, -1, -1):
        if groups[index] == 0:
            continue
        words += _three_digits(groups[index], inner=index != top, zero_tens=zero_tens)
        if _SCALES[index]:
            words.append(_SCALES[index])
    return " ".join(words)


def amount_in_words(amount: Decimal | int, *, zero_tens: str = "lẻ") -> str:
    """Write an amount of đồng (rounded to the whole đồng) as a sentence: "Một trăm năm mươi nghìn đồng".

    Raises ValueError for a negative amount or one above 999 tỷ.
    """
    number = int(Decimal(amount).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    text = number_in_words(number, zero_tens=zero_tens) + " đồng"
    return text[0].upper() + text[1:]
