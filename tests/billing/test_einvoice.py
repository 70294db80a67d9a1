"""E-invoices: the QĐ 1450 layout of a paid invoice, VAT-exempt, total in words, sent to a local fake provider."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal

import pytest
from werkzeug.wrappers import Request, Response

from billing.einvoice import (
    EInvoiceProvider,
    InvoiceNotPaid,
    Party,
    ProviderUnavailable,
    amount_in_words,
    einvoice_for_invoice,
)
from billing.models import Invoice
from billing.payments import record_desk_payment
from his.db import get_database

from .fakes import serve

HOSPITAL = Party(name="Bệnh viện huyện Demo", address="Xã Demo, Hà Nội", tax_code="0101234567")


def _xml(content: bytes) -> ET.Element:
    return ET.fromstring(content)  # noqa: S314 - our own output, not untrusted input


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (0, "Không đồng"),
        (15, "Mười lăm đồng"),
        (21, "Hai mươi mốt đồng"),
        (105, "Một trăm lẻ năm đồng"),
        (192589, "Một trăm chín mươi hai nghìn năm trăm tám mươi chín đồng"),
        (1005000, "Một triệu không trăm lẻ năm nghìn đồng"),
        (2000000000, "Hai tỷ đồng"),
        (350125, "Ba trăm năm mươi nghìn một trăm hai mươi lăm đồng"),
    ],
)
def test_amounts_are_written_in_vietnamese_words(amount, words):
    assert amount_in_words(Decimal(amount)) == words


def test_a_paid_invoice_becomes_a_vat_exempt_einvoice_for_what_the_patient_paid(app, invoice):
    with app.app_context(), get_database(app).session_scope() as session:
        unpaid = session.get(Invoice, invoice.id)
        with pytest.raises(InvoiceNotPaid):
            einvoice_for_invoice(
                session,
                unpaid,
                seller=HOSPITAL,
                template="2",
                series="C25TBV",
                number=1,
                issued_on=date(2025, 9, 10),
            )
        record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
        document = einvoice_for_invoice(
            session,
            session.get(Invoice, invoice.id),
            seller=HOSPITAL,
            template="2",
            series="C25TBV",
            number=7,
            issued_on=date(2025, 9, 10),
        )
    root = _xml(document)
    general = root.find("DLHDon/TTChung")
    assert (general.findtext("KHHDon"), general.findtext("SHDon"), general.findtext("NLap")) == (
        "C25TBV",
        "7",
        "2025-09-10",
    )
    items = root.findall("DLHDon/NDHDon/DSHHDVu/HHDVu")
    assert {item.findtext("TSuat") for item in items} == {"KCT"}
    assert [(i.findtext("TChat"), i.findtext("ThTien")) for i in items] == [
        ("1", "50600"),
        ("1", "500000"),
        ("1", "12345"),
        ("3", "370356"),
    ]
    totals = root.find("DLHDon/NDHDon/TToan")
    assert totals.findtext("TgTTTBSo") == "192589"
    assert totals.findtext("TgTThue") == "0"
    assert totals.findtext("TgTTTBChu") == "Một trăm chín mươi hai nghìn năm trăm tám mươi chín đồng"
    assert root.findtext("DLHDon/NDHDon/NMua/Ten") == "Nguyễn Văn An"
    assert root.findtext("DLHDon/NDHDon/NBan/MST") == "0101234567"


def test_the_provider_adapter_sends_the_xml_and_keeps_the_lookup_code():
    received: list[tuple[str, bytes]] = []

    def provider(environ, start_response):
        request = Request(environ)
        received.append((request.headers.get("X-Invoice-Reference", ""), request.get_data()))
        body = json.dumps({"lookup_code": "ABC123"})
        return Response(body, mimetype="application/json")(environ, start_response)

    document = b'<?xml version="1.0" encoding="utf-8"?>\n<HDon/>'
    with serve(provider) as url:
        assert EInvoiceProvider(url).submit(document, reference="VP2025000001") == "ABC123"
    assert received == [("VP2025000001", document)]
    with pytest.raises(ProviderUnavailable):
        EInvoiceProvider(url, timeout=2).submit(document, reference="VP2025000001")
    with pytest.raises(ProviderUnavailable):
        EInvoiceProvider("").submit(document, reference="VP2025000001")
