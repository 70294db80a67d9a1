"""VietQR payloads match the published vectors, read back to what was built, and draw as QR codes."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from billing.vietqr import (
    InvalidVietQR,
    MalformedVietQR,
    VietQRChecksumMismatch,
    ascii_note,
    build_payload,
    crc16_ccitt_false,
    parse_payload,
    render_png,
    render_svg,
    verify_crc,
)

BEAN_BAKERY = (
    "00020101021238530010A0000007270123000697043201091290057180208QRIBFTTA53037045802VN"
    "5920NGUYEN PHAM THUY LAN62390835Thanh toan don hang cho Bean Bakery6304"
)
VIETQR_SHOP = (
    "00020101021138550010A000000727012500069704230111512819892160208QRIBFTTA520454115303704"
    "540450005802VN5906VIETQR6005HANOI62220818Ck toi dangthequan6304"
)
HOSPITAL_BILL = (
    "00020101021238570010A00000072701270006970436011300110012345670208QRIBFTTA"
    "530370454061500005802VN62240820VIENPHI HS202500012363042C88"
)


@pytest.mark.parametrize(
    ("data", "crc"),
    [("123456789", "29B1"), (BEAN_BAKERY, "3AA2"), (VIETQR_SHOP, "403F")],
)
def test_crc_matches_every_published_vector(data, crc):
    assert crc16_ccitt_false(data) == crc
    assert crc16_ccitt_false(data.encode("ascii")) == crc


def test_hospital_bill_vector_is_built_exactly():
    payload = build_payload("970436", "0011001234567", amount=Decimal("150000"), note="VIENPHI HS2025000123")
    assert payload == HOSPITAL_BILL


def test_bean_bakery_vector_is_built_exactly():
    payload = build_payload(
        "970432",
        "129005718",
        dynamic=True,
        merchant_name="NGUYEN PHAM THUY LAN",
        note="Thanh toan don hang cho Bean Bakery",
    )
    assert payload == BEAN_BAKERY + "3AA2"


def test_static_shop_vector_with_an_amount_is_built_exactly():
    payload = build_payload(
        "970423",
        "51281989216",
        amount=5000,
        dynamic=False,
        merchant_category="5411",
        merchant_name="VIETQR",
        merchant_city="HANOI",
        note="Ck toi dangthequan",
    )
    assert payload == VIETQR_SHOP + "403F"


def test_every_vector_parses_to_its_fields():
    bill = parse_payload(HOSPITAL_BILL)
    assert (bill.bank_bin, bill.account, bill.amount, bill.note, bill.dynamic) == (
        "970436",
        "0011001234567",
        Decimal("150000"),
        "VIENPHI HS2025000123",
        True,
    )
    bakery = parse_payload(BEAN_BAKERY + "3AA2")
    assert (bakery.bank_bin, bakery.account, bakery.amount, bakery.merchant_name) == (
        "970432",
        "129005718",
        None,
        "NGUYEN PHAM THUY LAN",
    )
    shop = parse_payload(VIETQR_SHOP + "403F")
    assert (shop.dynamic, shop.amount, shop.merchant_city, shop.merchant_category, shop.note) == (
        False,
        Decimal("5000"),
        "HANOI",
        "5411",
        "Ck toi dangthequan",
    )


def test_a_code_without_amount_is_static():
    payload = build_payload("970415", "123456789")
    assert payload.startswith("000201010211")
    assert parse_payload(payload).amount is None


def test_a_changed_amount_is_caught_by_the_crc():
    tampered = HOSPITAL_BILL.replace("5406150000", "5406950000")
    assert not verify_crc(tampered)
    with pytest.raises(VietQRChecksumMismatch):
        parse_payload(tampered)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "000201",
        HOSPITAL_BILL[:-8],  # no CRC at all
        "0002010102123899",  # a length running past the end
        "00AB01",  # a header that is not digits
    ],
)
def test_broken_payloads_are_refused(payload):
    with pytest.raises(MalformedVietQR):
        parse_payload(payload)


def test_a_payload_for_another_scheme_is_refused_even_with_a_good_crc():
    body = "000201010212" + "38200010A000000999010200" + "5303704" + "5802VN" + "6304"
    with pytest.raises(MalformedVietQR, match="NAPAS"):
        parse_payload(body + crc16_ccitt_false(body))


def test_note_loses_vietnamese_diacritics():
    payload = build_payload("970436", "0011001234567", amount=200000, note="Viện phí  Đặng Thị Hường – HS01")
    assert parse_payload(payload).note == "Vien phi Dang Thi Huong - HS01"


def test_ascii_note_handles_every_vietnamese_letter():
    lower = "aàáảãạăằắẳẵặâầấẩẫậđeèéẻẽẹêềếểễệiìíỉĩịoòóỏõọôồốổỗộơờớởỡợuùúủũụưừứửữựyỳýỷỹỵ"
    assert ascii_note(lower) == "aaaaaaaaaaaaaaaaaadeeeeeeeeeeeeiiiiiioooooooooooooooooouuuuuuuuuuuuyyyyyy"
    assert ascii_note(lower.upper()) == ascii_note(lower).upper()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bank_bin": "97043"}, "bank_bin"),
        ({"bank_bin": "97043A"}, "bank_bin"),
        ({"account": ""}, "account"),
        ({"account": "0011-001"}, "account"),
        ({"account": "1" * 20}, "account"),
        ({"amount": Decimal("-150000")}, "amount"),
        ({"amount": Decimal("0")}, "amount"),
        ({"amount": Decimal("150000.5")}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": Decimal("1e14")}, "amount"),
        ({"note": "Thanh toán 😀"}, "note"),
        ({"note": "Hóa đơn 医院"}, "note"),
        ({"note": "x" * 96}, "note"),
        ({"merchant_name": "BENH VIEN DA KHOA HUYEN THANH TRI"}, "merchant_name"),
        ({"merchant_category": "54"}, "merchant_category"),
    ],
)
def test_values_that_cannot_be_encoded_are_refused_by_name(kwargs, field):
    arguments = {"bank_bin": "970436", "account": "0011001234567", "amount": Decimal("150000"), **kwargs}
    with pytest.raises(InvalidVietQR) as caught:
        build_payload(**arguments)
    assert field in caught.value.fields


def test_the_longest_note_that_fits_is_accepted():
    payload = build_payload("970436", "0011001234567", amount=1, note="x" * 95)
    assert parse_payload(payload).note == "x" * 95


def test_a_whole_amount_written_with_decimals_is_accepted():
    payload = build_payload(
        "970436", "0011001234567", amount=Decimal("150000.00"), note="VIENPHI HS2025000123"
    )
    assert payload == HOSPITAL_BILL


_notes = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -._/àáạđĐơưỹẫỆ"),
    max_size=60,
)


@given(
    bank_bin=st.from_regex(r"[0-9]{6}", fullmatch=True),
    account=st.from_regex(r"[0-9A-Za-z]{1,19}", fullmatch=True),
    amount=st.none() | st.integers(min_value=1, max_value=10**13 - 1).map(Decimal),
    note=_notes,
)
def test_any_payload_we_build_reads_back_to_the_same_fields(bank_bin, account, amount, note):
    payload = build_payload(bank_bin, account, amount=amount, note=note)
    assert payload.isascii()
    assert verify_crc(payload)
    parsed = parse_payload(payload)
    assert (parsed.bank_bin, parsed.account, parsed.amount) == (bank_bin, account, amount)
    assert parsed.dynamic is (amount is not None)
    assert parsed.note == (ascii_note(note) or None)


def _modules_from_png(png: bytes, scale: int, border: int) -> list[list[bool]]:
    image = Image.open(io.BytesIO(png)).convert("L")
    size = image.width // scale - 2 * border
    return [
        [
            image.getpixel(((border + col) * scale + scale // 2, (border + row) * scale + scale // 2)) < 128
            for col in range(size)
        ]
        for row in range(size)
    ]


def test_png_draws_the_qr_code_of_the_payload():
    png = render_png(HOSPITAL_BILL, scale=4, border=4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.width == image.height
    expected = segno.make(HOSPITAL_BILL, error="m", micro=False, boost_error=False)
    drawn = _modules_from_png(png, 4, 4)
    assert drawn == [[bool(module) for module in row] for row in expected.matrix]
    assert expected.error == "M"


def test_svg_is_an_svg_document_of_the_same_size():
    svg = render_svg(HOSPITAL_BILL, scale=4, border=4, title="VietQR")
    root = ET.fromstring(svg)  # noqa: S314 - the document is our own output, not untrusted input
    assert root.tag.endswith("svg")
    png = Image.open(io.BytesIO(render_png(HOSPITAL_BILL, scale=4, border=4)))
    assert int(float(root.attrib["width"].removesuffix("px"))) == png.width
    assert "VietQR" in svg
