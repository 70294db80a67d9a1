"""The insurance claim of a visit: XML1, XML2 and XML3, base64 in the GIAMDINHHS envelope, pinned by golden files."""

from __future__ import annotations

import base64
import os
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.claims import ClaimLine, ClaimNotReady, ClaimVisit, claim_document, claim_for_invoice
from billing.invoices import Facility
from his.db import get_database

DATA = Path(__file__).parent / "data"
REGENERATE = os.environ.get("VETINH_REGENERATE_GOLDEN") == "1"

WORKED_EXAMPLE = ClaimVisit(
    link_code="VP2025000001",
    patient_code="BN000123",
    full_name="Nguyễn Văn An",
    national_id="001080012345",
    birth_date=date(1980, 5, 17),
    sex="male",
    address="Số 1 Tràng Tiền, Hoàn Kiếm, Hà Nội <& co>",
    card_code="DN4010123456789",
    registered_facility="01234",
    card_valid_from=date(2025, 1, 1),
    card_valid_to=date(2025, 12, 31),
    diagnosis="Tăng huyết áp vô căn (nguyên phát)",
    main_icd="I10",
    other_icds=("E11", "J00"),
    patient_category="1.1",
    admitted_at=datetime(2025, 9, 10, 2, 0, tzinfo=UTC),
    discharged_at=datetime(2025, 9, 10, 3, 15, tzinfo=UTC),
    paid_at=datetime(2025, 9, 10, 3, 30, tzinfo=UTC),
    benefit_percent=80,
    facility_code="01234",
    department="K01",
    lines=(
        ClaimLine("KB01", "Khám bệnh nội khoa", "13", "lần", Decimal("1"), Decimal("50600"), Decimal("50600"),
                  Decimal("50600"), Decimal("50600"), Decimal("40480"), Decimal("10120"), Decimal("0"),
                  datetime(2025, 9, 10, 2, 0, tzinfo=UTC)),
        ClaimLine("SA01", "Siêu âm ổ bụng", "2", "lần", Decimal("2"), Decimal("250000"), Decimal("200000"),
                  Decimal("500000"), Decimal("400000"), Decimal("320000"), Decimal("80000"), Decimal("100000"),
                  datetime(2025, 9, 10, 2, 20, tzinfo=UTC)),
        ClaimLine("TH01", "Paracetamol 500mg", "4", "viên", Decimal("10"), Decimal("1234.5"), Decimal("1234.5"),
                  Decimal("12345"), Decimal("12345"), Decimal("9876"), Decimal("2469"), Decimal("0"),
                  datetime(2025, 9, 10, 3, 0, tzinfo=UTC)),
    ),
)  # fmt: skip


def _xml(content: bytes | str) -> ET.Element:
    return ET.fromstring(content)  # noqa: S314 - our own output, not untrusted input


def _tables(document: bytes) -> dict[str, bytes]:
    root = _xml(document)
    return {
        node.findtext("LOAIHOSO"): base64.b64decode(node.findtext("NOIDUNGFILE") or "")
        for node in root.iter("FILEHOSO")
    }


def _golden(name: str, content: bytes) -> bytes:
    path = DATA / name
    if REGENERATE:
        path.write_bytes(content)
    return path.read_bytes()


def test_the_worked_example_matches_the_golden_files_exactly():
    document = claim_document(WORKED_EXAMPLE, date(2025, 9, 10))
    assert document == _golden("claim_envelope.xml", document)
    for kind, content in _tables(document).items():
        assert content == _golden(f"claim_{kind.lower()}.xml", content), kind


def test_each_table_decodes_to_well_formed_utf8_xml():
    tables = _tables(claim_document(WORKED_EXAMPLE, date(2025, 9, 10)))
    assert list(tables) == ["XML1", "XML2", "XML3"]
    roots = {kind: _xml(content.decode("utf-8")) for kind, content in tables.items()}
    assert [root.tag for root in roots.values()] == [
        "TONG_HOP",
        "CHITIEU_CHITIET_THUOC",
        "CHITIEU_CHITIET_DVKT_VTYT",
    ]
    summary = roots["XML1"]
    assert summary.findtext("HO_TEN") == "Nguyễn Văn An"
    assert summary.findtext("DIA_CHI") == "Số 1 Tràng Tiền, Hoàn Kiếm, Hà Nội <& co>"
    assert summary.findtext("NGAY_VAO") == "202509100900"  # Hà Nội time
    assert summary.findtext("MA_BENH_KT") == "E11;J00"
    drugs = roots["XML2"].findall("DSACH_CHI_TIET_THUOC/CHI_TIET_THUOC")
    assert [
        (d.findtext("MA_THUOC"), d.findtext("DON_GIA_BV"), d.findtext("THANH_TIEN_BV")) for d in drugs
    ] == [("TH01", "1234.5", "12345")]
    services = roots["XML3"].findall("DSACH_CHI_TIET_DVKT/CHI_TIET_DVKT")
    assert [s.findtext("MA_DICH_VU") for s in services] == ["KB01", "SA01"]
    # The summary's totals are the sums of the lines, and its parts make its total.
    assert summary.findtext("T_TONGCHI_BV") == "562945"
    assert summary.findtext("T_THUOC") == "12345"
    parts = [Decimal(summary.findtext(name)) for name in ("T_BHTT", "T_BNCCT", "T_BNTT")]
    assert sum(parts) == Decimal("562945")


def test_a_paid_visit_is_claimed_from_the_database(app, invoice):
    with get_database(app).session_scope() as session:
        visit = claim_for_invoice(session, invoice.id, Facility(code="01234"))
    tables = _tables(claim_document(visit, date(2025, 9, 10)))
    summary = _xml(tables["XML1"])
    assert summary.findtext("MA_LK") == invoice.reference
    assert summary.findtext("MA_THE_BHYT") == "DN4010123456789"
    assert summary.findtext("SO_CCCD") == ""
    assert summary.findtext("MA_DOITUONG_KCB") == "1.1"
    assert summary.findtext("T_BHTT") == "370356"
    assert _xml(tables["XML3"]).find("DSACH_CHI_TIET_DVKT/CHI_TIET_DVKT/MUC_HUONG").text == "80"


def test_a_visit_without_a_card_is_not_claimed(app, prices, patient, encounter):
    from billing.charges import record_charge
    from billing.invoices import open_invoice

    from .conftest import VISIT_AT

    with get_database(app).session_scope() as session:
        record_charge(session, patient, encounter, "KB01", 1, VISIT_AT, "v")
        invoice = open_invoice(session, encounter, Facility(code="01234"))
        with pytest.raises(ClaimNotReady):
            claim_for_invoice(session, invoice.id, Facility(code="01234"))


def test_the_batch_holds_the_paid_insured_visits_of_the_range(app, invoice):
    from billing.claims import claims_between
    from billing.payments import record_desk_payment

    facility = Facility(code="01234")
    with get_database(app).session_scope() as session:
        assert claims_between(session, date(2025, 9, 1), date(2025, 9, 30), facility) == []  # not paid yet
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
    with get_database(app).session_scope() as session:
        assert [
            v.link_code for v in claims_between(session, date(2025, 9, 1), date(2025, 9, 30), facility)
        ] == [invoice.reference]
        assert claims_between(session, date(2025, 10, 1), date(2025, 10, 31), facility) == []


class FlakyClaimGateway:
    """Answer 503 a given number of times, then accept; refuse envelopes without GIAMDINHHS with 400."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[str, bytes]] = []

    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        body = request.get_data()
        self.received.append((request.headers.get("X-Ma-Lk", ""), body))
        if b"<GIAMDINHHS>" not in body:
            return Response("{}", status=400, mimetype="application/json")(environ, start_response)
        if self.failures:
            self.failures -= 1
            return Response("busy", status=503)(environ, start_response)
        return Response('{"receipt": "R-0001"}', mimetype="application/json")(environ, start_response)


def test_the_submission_retries_a_busy_gateway_and_gives_up_clearly():
    from billing.claims import ClaimGateway, ClaimGatewayUnavailable, ClaimRejected

    from .fakes import serve

    document = claim_document(WORKED_EXAMPLE, date(2025, 9, 10))
    waits: list[float] = []
    flaky = FlakyClaimGateway(failures=2)
    with serve(flaky) as url:
        gateway = ClaimGateway(url, attempts=3, backoff_seconds=0.1, sleep=waits.append)
        assert gateway.submit(document, link_code="VP2025000001") == "R-0001"
        assert waits == [0.1, 0.2]
        assert [lk for lk, _body in flaky.received] == ["VP2025000001"] * 3
        flaky.failures = 5
        with pytest.raises(ClaimGatewayUnavailable) as caught:
            gateway.submit(document, link_code="VP2025000001")
        assert caught.value.extra["reason"] == "HTTP 503"
        with pytest.raises(ClaimRejected):
            gateway.submit(b"<not-a-claim/>", link_code="VP2025000001")
