"""Build, read and draw VietQR payment codes (EMVCo merchant-presented QR, NAPAS 247 transfers).

A payload is a string of TLV fields: a two-digit tag, a two-digit length and the value.
VietQR puts the bank's BIN and the account inside tag 38, the amount in VND in tag 54,
the transfer note in tag 62/08, and ends with tag 63, a CRC-16/CCITT-FALSE over the
whole string up to and including ``6304``. A QR code only asks for a payment; the
bank's notification is what confirms it.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import segno

from his.errors import N_, BadRequest, ValidationFailed

NAPAS_GUID = "A000000727"
SERVICE_TO_ACCOUNT = "QRIBFTTA"
CURRENCY_VND = "704"
COUNTRY_VN = "VN"
STATIC = "11"
DYNAMIC = "12"

_BIN = re.compile(r"^[0-9]{6}$")
_ACCOUNT = re.compile(r"^[0-9A-Za-z]{1,19}$")
_MCC = re.compile(r"^[0-9]{4}$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")
_MAX_AMOUNT_DIGITS = 13
_MAX_VALUE = 99
# Typographic punctuation that word processors put in names and notes, and its ASCII form.
_ASCII_PUNCTUATION = str.maketrans(
    {"đ": "d", "Đ": "D", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"'}
)


class InvalidVietQR(ValidationFailed):
    """A value given for a VietQR payment cannot be put in a payload."""

    code = "VIETQR_INVALID"
    message = N_("The payment details cannot be put in a VietQR code.")

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, fields={field: message})


class MalformedVietQR(BadRequest):
    """A payload is not a well-formed VietQR string."""

    code = "VIETQR_MALFORMED"
    message = N_("This is not a valid VietQR code.")


class VietQRChecksumMismatch(MalformedVietQR):
    """A payload's CRC does not match its content: it was mistyped or altered."""

    code = "VIETQR_BAD_CRC"
    message = N_("The VietQR code's checksum does not match its content.")


def crc16_ccitt_false(data: str | bytes) -> str:
    """Return the CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of ``data`` as 4 upper-case hex digits."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    crc = 0xFFFF
    for byte in raw:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return f"{crc:04X}"


def tlv(tag: str, value: str) -> str:
    """Encode one field as tag, two-digit length and value.

    Raises InvalidVietQR when the value is longer than 99 characters.
    """
    if len(value) > _MAX_VALUE:
        raise InvalidVietQR(N_("A VietQR field holds at most 99 characters."), field=tag)
    return f"{tag}{len(value):02d}{value}"


def parse_tlv(text: str) -> list[tuple[str, str]]:
    """Split a TLV string into its (tag, value) pairs, in order.

    Raises MalformedVietQR when a header is not digits or a length runs past the end.
    """
    fields: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        header = text[position : position + 4]
        if len(header) < 4 or not header.isdigit():
            raise MalformedVietQR(extra={"position": position})
        length = int(header[2:])
        value = text[position + 4 : position + 4 + length]
        if len(value) != length:
            raise MalformedVietQR(extra={"position": position})
        fields.append((header[:2], value))
        position += 4 + length
    return fields


def ascii_note(note: str) -> str:
    """Return a transfer note in plain ASCII: Vietnamese diacritics removed, spaces collapsed.

    Raises InvalidVietQR when a character is left that banks cannot carry.
    """
    text = unicodedata.normalize("NFKD", note.translate(_ASCII_PUNCTUATION))
    text = "".join(char for char in text if not unicodedata.combining(char))
    text = " ".join(text.split())
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise InvalidVietQR(
            N_("The transfer note may only contain letters, digits and punctuation."), field="note"
        )
    return text


def format_amount(amount: Decimal | int | str) -> str:
    """Return an amount of đồng as the digits of tag 54.

    Raises InvalidVietQR for an amount that is not a whole, positive number of đồng or is too long.
    """
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation as exc:
        raise InvalidVietQR(N_("The amount must be a whole number of đồng."), field="amount") from exc
    if not value.is_finite() or value != value.to_integral_value():
        raise InvalidVietQR(N_("The amount must be a whole number of đồng."), field="amount")
    if value <= 0:
        raise InvalidVietQR(N_("The amount must be greater than zero."), field="amount")
    digits = str(int(value))
    if len(digits) > _MAX_AMOUNT_DIGITS:
        raise InvalidVietQR(N_("The amount is too large for a VietQR code."), field="amount")
    return digits


@dataclass(frozen=True)
class VietQR:
    """The fields of a VietQR payment request."""

    bank_bin: str
    account: str
    amount: Decimal | None = None
    note: str | None = None
    dynamic: bool = False
    merchant_name: str | None = None
    merchant_city: str | None = None
    merchant_category: str | None = None
    crc: str | None = field(default=None, compare=False)


def build_payload(
    bank_bin: str,
    account: str,
    *,
    amount: Decimal | int | str | None = None,
    note: str | None = None,
    dynamic: bool | None = None,
    merchant_name: str | None = None,
    merchant_city: str | None = None,
    merchant_category: str | None = None,
) -> str:
    """Build the VietQR payload for a transfer to ``account`` at the bank ``bank_bin``.

    A code is dynamic (one payment, tag 01 = 12) when it carries an amount unless told
    otherwise. The note loses its diacritics.

    Raises InvalidVietQR naming the field that cannot be encoded: a BIN that is not 6
    digits, a bad account, a negative, zero or fractional amount, a note with characters
    that are not ASCII once the diacritics are gone, or a value too long to fit.
    """
    if not _BIN.fullmatch(bank_bin):
        raise InvalidVietQR(N_("A bank BIN has exactly 6 digits."), field="bank_bin")
    if not _ACCOUNT.fullmatch(account):
        raise InvalidVietQR(N_("An account number has 1 to 19 letters or digits."), field="account")
    if merchant_category is not None and not _MCC.fullmatch(merchant_category):
        raise InvalidVietQR(N_("A merchant category code has exactly 4 digits."), field="merchant_category")
    is_dynamic = amount is not None if dynamic is None else dynamic
    beneficiary = tlv("00", bank_bin) + tlv("01", account)
    merchant_account = tlv("00", NAPAS_GUID) + tlv("01", beneficiary) + tlv("02", SERVICE_TO_ACCOUNT)
    parts = [tlv("00", "01"), tlv("01", DYNAMIC if is_dynamic else STATIC), tlv("38", merchant_account)]
    if merchant_category is not None:
        parts.append(tlv("52", merchant_category))
    parts.append(tlv("53", CURRENCY_VND))
    if amount is not None:
        parts.append(tlv("54", format_amount(amount)))
    parts.append(tlv("58", COUNTRY_VN))
    if merchant_name is not None:
        parts.append(_limited("59", ascii_note(merchant_name), 25, field="merchant_name"))
    if merchant_city is not None:
        parts.append(_limited("60", ascii_note(merchant_city), 15, field="merchant_city"))
    if note:
        text = ascii_note(note)
        if len(text) + 4 > _MAX_VALUE:
            raise InvalidVietQR(N_("The transfer note is too long for a VietQR code."), field="note")
        if text:
            parts.append(tlv("62", tlv("08", text)))
    body = "".join(parts) + "6304"
    return body + crc16_ccitt_false(body)


def _limited(tag: str, value: str, limit: int, *, field: str) -> str:
    if len(value) > limit:
        raise InvalidVietQR(N_("This value is too long for a VietQR code."), field=field)
    return tlv(tag, value)


def verify_crc(payload: str) -> bool:
    """Tell whether a payload ends in ``6304`` and a CRC that matches the rest."""
    if len(payload) < 8 or payload[-8:-4] != "6304":
        return False
    return crc16_ccitt_false(payload[:-4]) == payload[-4:].upper()


def parse_payload(payload: str) -> VietQR:
    """Read a VietQR payload back into its fields after checking its CRC and structure.

    Raises VietQRChecksumMismatch when the CRC is wrong, and MalformedVietQR when the TLV
    structure is broken, the CRC is not the last field, or a VietQR field is missing or wrong.
    """
    text = payload.strip()
    fields = parse_tlv(text)
    if not fields or fields[-1][0] != "63" or len(fields[-1][1]) != 4:
        raise MalformedVietQR(N_("The VietQR code has no checksum at its end."))
    if not verify_crc(text):
        raise VietQRChecksumMismatch()
    top = dict(fields)
    if top.get("00") != "01" or top.get("01") not in {STATIC, DYNAMIC}:
        raise MalformedVietQR(N_("The VietQR code has an unknown format version."))
    merchant = dict(parse_tlv(top.get("38", "")))
    if merchant.get("00") != NAPAS_GUID or "01" not in merchant:
        raise MalformedVietQR(N_("The VietQR code does not name a NAPAS bank account."))
    beneficiary = dict(parse_tlv(merchant["01"]))
    if not _BIN.fullmatch(beneficiary.get("00", "")) or not beneficiary.get("01"):
        raise MalformedVietQR(N_("The VietQR code does not name a NAPAS bank account."))
    if top.get("53") != CURRENCY_VND:
        raise MalformedVietQR(N_("The VietQR code is not in Vietnamese đồng."))
    amount: Decimal | None = None
    if "54" in top:
        try:
            amount = Decimal(top["54"])
        except InvalidOperation as exc:
            raise MalformedVietQR(N_("The VietQR code's amount is not a number.")) from exc
    additional = dict(parse_tlv(top["62"])) if "62" in top else {}
    return VietQR(
        bank_bin=beneficiary["00"],
        account=beneficiary["01"],
        amount=amount,
        note=additional.get("08"),
        dynamic=top["01"] == DYNAMIC,
        merchant_name=top.get("59"),
        merchant_city=top.get("60"),
        merchant_category=top.get("52"),
        crc=fields[-1][1],
    )


def render_png(payload: str, *, scale: int = 8, border: int = 4) -> bytes:
    """Draw the payload as a PNG QR code (error correction M, as banking apps expect)."""
    buffer = io.BytesIO()
    segno.make(payload, error="m", micro=False, boost_error=False).save(
        buffer, kind="png", scale=scale, border=border
    )
    return buffer.getvalue()


def render_svg(payload: str, *, scale: int = 8, border: int = 4, title: str | None = None) -> str:
    """Draw the payload as an SVG QR code, ready to inline in a page."""
    buffer = io.BytesIO()
    segno.make(payload, error="m", micro=False, boost_error=False).save(
        buffer, kind="svg", scale=scale, border=border, xmldecl=False, title=title, unit="px"
    )
    return buffer.getvalue().decode("utf-8")
