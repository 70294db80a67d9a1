"""Serialize JSON canonically (RFC 8785, JCS) so a signature covers meaning, not layout.

Objects have their keys sorted by UTF-16 code units, no whitespace is written, strings
use the shortest escapes, and numbers are written as ECMAScript writes an IEEE-754
double. ``Decimal`` values (the store keeps FHIR decimals exact) are converted to the
nearest double first, as the RFC requires.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class NotCanonicalizable(ValueError):
    """The value holds something JSON cannot carry canonically (NaN, infinity, a set...)."""


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def number(value: float | int | Decimal) -> str:
    """Write a number as ECMAScript's Number.prototype.toString does.

    Raises NotCanonicalizable for NaN and infinities.
    """
    double = float(value)
    if math.isnan(double) or math.isinf(double):
        raise NotCanonicalizable("NaN and infinity have no JSON form")
    if double == 0:
        return "0"
    sign = "-" if double < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires.
    mantissa, _, exp_text = repr(abs(double)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    leading_zeros = len(whole + fraction) - len((whole + fraction).lstrip("0"))
    exponent = (int(exp_text) if exp_text else 0) + len(whole) - leading_zeros
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), exponent
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        power = n - 1
        text = (
            digits[0]
            + ("." + digits[1:] if k > 1 else "")
            + "e"
            + ("+" if power > 0 else "-")
            + str(abs(power))
        )
    return sign + text


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int | float | Decimal):
        out.append(number(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(sorted(value, key=lambda k: str(k).encode("utf-16-be"))):
            if not isinstance(key, str):
                raise NotCanonicalizable(f"object keys must be strings, not {type(key).__name__}")
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise NotCanonicalizable(f"{type(value).__name__} is not JSON")


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Raises NotCanonicalizable for values JSON cannot carry.
    """
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def canonicalize_text(text: str) -> bytes:
    """Parse JSON text (decimals kept) and return its canonical bytes."""
    return canonicalize(json.loads(text, parse_float=Decimal))
