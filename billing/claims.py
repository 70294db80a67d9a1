"""Write the insurance claim of a visit in the XML 130 family (QĐ 130/2023, 4750/2023, 3176/2024).

Each visit becomes three tables, each its own UTF-8 XML document: XML1 the summary
(``TONG_HOP``), XML2 the drugs (``CHITIEU_CHITIET_THUOC``) and XML3 the services and
supplies (``CHITIEU_CHITIET_DVKT_VTYT``). Each table is base64-encoded into a
``FILEHOSO`` of the ``GIAMDINHHS`` envelope. The tables hold the fields VIETNAM.md names
(a core subset of the decision's columns); free text goes in CDATA, times are
``yyyymmddHHMM`` in the hospital's time zone, money is written exactly, without
trailing zeros. The builders here are pure; :func:`claim_for_invoice` gathers a visit.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.bhyt import Referral
from billing.charges import DEFAULT_ZONE
from billing.fhir_mapping import plain
from billing.invoices import Facility, get_invoice, referral_of
from billing.models import Charge, CoverageRecord, Invoice
from billing.rules import rules_on
from fhir import services as store
from his.db import as_utc
from his.errors import N_, Conflict, VetinhError
from his.identifiers import NATIONAL_ID_SYSTEM

XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
SEX_CODES = {"male": "1", "female": "2"}
# MA_DOITUONG_KCB by how the patient came (likely; QĐ 4750 code list, keep under review).
PATIENT_CATEGORY = {
    Referral.REGISTERED: "1.1",
    Referral.EMERGENCY: "1.2",
    Referral.REFERRED: "1.3",
    Referral.SELF_REFERRED: "3",
}
OUTPATIENT_VISIT = "01"
DRUG_GROUPS = frozenset({"4", "5"})
SUPPLY_GROUPS = frozenset({"10", "11"})


class ClaimNotReady(Conflict):
    code = "BILLING_CLAIM_NOT_READY"
    message = N_("The visit cannot be claimed yet: it has no insurance card or no billed lines.")


class CData(str):
    """Text written as a CDATA section (free text in the XML 130 tables)."""


def _text(value: object) -> str:
    if isinstance(value, CData):
        return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"
    if isinstance(value, Decimal):
        return format(plain(value), "f")
    return escape("" if value is None else str(value))


def _element(name: str, value: object) -> str:
    return f"<{name}>{_text(value)}</{name}>"


def _record(fields: Iterable[tuple[str, object]]) -> str:
    return "".join(_element(name, value) for name, value in fields)


def moment(value: datetime | None, zone: ZoneInfo) -> str:
    """Write a time as ``yyyymmddHHMM`` in the hospital's zone (empty when unknown)."""
    return as_utc(value).astimezone(zone).strftime("%Y%m%d%H%M") if value is not None else ""


def day(value: date | None) -> str:
    """Write a date as ``yyyymmdd`` (empty when unknown)."""
    return value.strftime("%Y%m%d") if value is not None else ""


@dataclass(frozen=True)
class ClaimLine:
    """One billed line as the claim tables need it."""

    code: str
    name: str
    group: str
    unit: str
    quantity: Decimal
    unit_price: Decimal
    insurance_unit_price: Decimal
    total: Decimal
    covered: Decimal
    fund: Decimal
    copay: Decimal
    patient_full: Decimal
    ordered_at: datetime


@dataclass(frozen=True)
class ClaimVisit:
    """Everything one visit's claim says."""

    link_code: str
    patient_code: str
    full_name: str
    national_id: str
    birth_date: date | None
    sex: str
    address: str
    card_code: str
    registered_facility: str
    card_valid_from: date | None
    card_valid_to: date | None
    diagnosis: str
    main_icd: str
    other_icds: Sequence[str]
    patient_category: str
    admitted_at: datetime
    discharged_at: datetime
    paid_at: datetime | None
    benefit_percent: int
    facility_code: str
    department: str
    lines: Sequence[ClaimLine] = field(default_factory=tuple)
    weight: str = ""

    @property
    def drugs(self) -> list[ClaimLine]:
        return [line for line in self.lines if line.group in DRUG_GROUPS]

    @property
    def services(self) -> list[ClaimLine]:
        return [line for line in self.lines if line.group not in DRUG_GROUPS]

    def total(self, attribute: str, lines: Iterable[ClaimLine] | None = None) -> Decimal:
        return sum(
            (getattr(line, attribute) for line in (self.lines if lines is None else lines)), Decimal(0)
        )


def xml1(visit: ClaimVisit, zone: ZoneInfo = DEFAULT_ZONE) -> bytes:
    """Write the summary table (XML1, ``TONG_HOP``) of a visit."""
    settled = visit.paid_at or visit.discharged_at
    local = as_utc(settled).astimezone(zone)
    fields: list[tuple[str, object]] = [
        ("MA_LK", visit.link_code),
        ("STT", 1),
        ("MA_BN", visit.patient_code),
        ("HO_TEN", CData(visit.full_name)),
        ("SO_CCCD", visit.national_id),
        ("NGAY_SINH", day(visit.birth_date) + "0000" if visit.birth_date else ""),
        ("GIOI_TINH", SEX_CODES.get(visit.sex, "3")),
        ("DIA_CHI", CData(visit.address)),
        ("MA_THE_BHYT", visit.card_code),
        ("MA_DKBD", visit.registered_facility),
        ("GT_THE_TU", day(visit.card_valid_from)),
        ("GT_THE_DEN", day(visit.card_valid_to)),
        ("CHAN_DOAN_VAO", CData(visit.diagnosis)),
        ("CHAN_DOAN_RV", CData(visit.diagnosis)),
        ("MA_BENH_CHINH", visit.main_icd),
        ("MA_BENH_KT", ";".join(visit.other_icds)),
        ("MA_DOITUONG_KCB", visit.patient_category),
        ("NGAY_VAO", moment(visit.admitted_at, zone)),
        ("NGAY_RA", moment(visit.discharged_at, zone)),
        ("KET_QUA_DTRI", 1),
        ("MA_LOAI_RV", 1),
        ("NGAY_TTOAN", moment(settled, zone)),
        ("T_THUOC", visit.total("total", visit.drugs)),
        ("T_VTYT", visit.total("total", [line for line in visit.lines if line.group in SUPPLY_GROUPS])),
        ("T_TONGCHI_BV", visit.total("total")),
        ("T_TONGCHI_BH", visit.total("covered")),
        ("T_BNTT", visit.total("patient_full")),
        ("T_BNCCT", visit.total("copay")),
        ("T_BHTT", visit.total("fund")),
        ("T_NGUONKHAC", Decimal(0)),
        ("NAM_QT", local.year),
        ("THANG_QT", local.month),
        ("MA_LOAI_KCB", OUTPATIENT_VISIT),
        ("MA_KHOA", visit.department),
        ("MA_CSKCB", visit.facility_code),
        ("CAN_NANG", visit.weight),
    ]
    return (XML_DECLARATION + "<TONG_HOP>" + _record(fields) + "</TONG_HOP>").encode("utf-8")


def _line_common(visit: ClaimVisit, line: ClaimLine) -> list[tuple[str, object]]:
    return [
        ("PHAM_VI", 1),
        ("SO_LUONG", line.quantity),
        ("DON_GIA_BV", line.unit_price),
        ("DON_GIA_BH", line.insurance_unit_price),
        ("TYLE_TT_BH", 100),
        ("THANH_TIEN_BV", line.total),
        ("THANH_TIEN_BH", line.covered),
        ("MUC_HUONG", visit.benefit_percent),
        ("T_NGUONKHAC", Decimal(0)),
        ("T_BNTT", line.patient_full),
        ("T_BNCCT", line.copay),
        ("T_BHTT", line.fund),
        ("MA_KHOA", visit.department),
    ]


def xml2(visit: ClaimVisit, zone: ZoneInfo = DEFAULT_ZONE) -> bytes:
    """Write the drug table (XML2) of a visit."""
    rows = []
    for index, line in enumerate(visit.drugs, start=1):
        fields: list[tuple[str, object]] = [
            ("MA_LK", visit.link_code),
            ("STT", index),
            ("MA_THUOC", line.code),
            ("MA_NHOM", line.group),
            ("TEN_THUOC", CData(line.name)),
            ("DON_VI_TINH", CData(line.unit)),
            *_line_common(visit, line),
            ("NGAY_YL", moment(line.ordered_at, zone)),
        ]
        rows.append("<CHI_TIET_THUOC>" + _record(fields) + "</CHI_TIET_THUOC>")
    body = "<CHITIEU_CHITIET_THUOC><DSACH_CHI_TIET_THUOC>" + "".join(rows)
    return (XML_DECLARATION + body + "</DSACH_CHI_TIET_THUOC></CHITIEU_CHITIET_THUOC>").encode("utf-8")


def xml3(visit: ClaimVisit, zone: ZoneInfo = DEFAULT_ZONE) -> bytes:
    """Write the services and supplies table (XML3) of a visit."""
    rows = []
    for index, line in enumerate(visit.services, start=1):
        supply = line.group in SUPPLY_GROUPS
        fields: list[tuple[str, object]] = [
            ("MA_LK", visit.link_code),
            ("STT", index),
            ("MA_DICH_VU", "" if supply else line.code),
            ("MA_VAT_TU", line.code if supply else ""),
            ("MA_NHOM", line.group),
            ("TEN_VAT_TU", CData(line.name if supply else "")),
            ("TEN_DICH_VU", CData("" if supply else line.name)),
            ("DON_VI_TINH", CData(line.unit)),
            *_line_common(visit, line),
            ("MA_BENH", visit.main_icd),
            ("NGAY_YL", moment(line.ordered_at, zone)),
            ("NGAY_KQ", moment(line.ordered_at, zone)),
        ]
        rows.append("<CHI_TIET_DVKT>" + _record(fields) + "</CHI_TIET_DVKT>")
    body = "<CHITIEU_CHITIET_DVKT_VTYT><DSACH_CHI_TIET_DVKT>" + "".join(rows)
    return (XML_DECLARATION + body + "</DSACH_CHI_TIET_DVKT></CHITIEU_CHITIET_DVKT_VTYT>").encode("utf-8")


def envelope(facility_code: str, created_on: date, tables: Sequence[tuple[str, bytes]]) -> bytes:
    """Wrap a visit's tables, each base64-encoded, in the ``GIAMDINHHS`` envelope (unsigned)."""
    files = "".join(
        "<FILEHOSO>"
        + _element("LOAIHOSO", kind)
        + _element("NOIDUNGFILE", base64.b64encode(content).decode("ascii"))
        + "</FILEHOSO>"
        for kind, content in tables
    )
    body = (
        "<GIAMDINHHS>"
        + "<THONGTINDONVI>"
        + _element("MACSKCB", facility_code)
        + "</THONGTINDONVI>"
        + "<THONGTINHOSO>"
        + _element("NGAYLAP", day(created_on))
        + _element("SOLUONGHOSO", 1)
        + "<DANHSACHHOSO><HOSO>"
        + files
        + "</HOSO></DANHSACHHOSO>"
        + "</THONGTINHOSO>"
        + "<CHUKYDONVI></CHUKYDONVI>"
        + "</GIAMDINHHS>"
    )
    return (XML_DECLARATION + body).encode("utf-8")


def claim_document(visit: ClaimVisit, created_on: date, zone: ZoneInfo = DEFAULT_ZONE) -> bytes:
    """Return the whole claim of one visit: XML1, XML2 and XML3 in their envelope."""
    tables = [("XML1", xml1(visit, zone)), ("XML2", xml2(visit, zone)), ("XML3", xml3(visit, zone))]
    return envelope(visit.facility_code, created_on, tables)


def _patient_facts(session: Session, patient_id: str) -> dict[str, str]:
    resource = store.read(session, "Patient", patient_id).resource
    name = (resource.get("name") or [{}])[0]
    full_name = name.get("text") or " ".join([name.get("family", ""), *name.get("given", [])]).strip()
    national_id = next(
        (i.get("value", "") for i in resource.get("identifier", []) if i.get("system") == NATIONAL_ID_SYSTEM),
        "",
    )
    address = (resource.get("address") or [{}])[0].get("text", "")
    return {
        "full_name": full_name,
        "national_id": national_id,
        "birth_date": resource.get("birthDate", ""),
        "sex": resource.get("gender", ""),
        "address": address,
    }


def _diagnoses(encounter: dict[str, Any]) -> tuple[str, list[str]]:
    codes: list[tuple[str, str]] = []
    for reason in encounter.get("reasonCode") or []:
        if isinstance(reason, dict):
            for coding in reason.get("coding", []):
                if coding.get("code"):
                    codes.append(
                        (str(coding["code"]), str(coding.get("display") or reason.get("text") or ""))
                    )
    return ("; ".join(text for _code, text in codes if text), [code for code, _text in codes])


def _benefit_percent(invoice: Invoice) -> int:
    """Return MUC_HUONG: the card's share, or 100 when a rule (low cost, exemption) raised it."""
    if invoice.benefit_level is None:
        return 0
    if invoice.reasons:
        return 100
    share = rules_on(invoice.visit_date).benefit_rates[invoice.benefit_level]
    return int((share * 100).to_integral_value())


def claim_for_invoice(
    session: Session,
    invoice_id: int,
    facility: Facility,
    *,
    department: str = "K01",
    zone: ZoneInfo = DEFAULT_ZONE,
) -> ClaimVisit:
    """Gather one invoiced visit's claim from the invoice, the card, the Patient and the Encounter.

    Diagnoses come from the Encounter's ``reasonCode`` (ICD-10 codings) until the records
    context offers its own. Raises InvoiceNotFound, and ClaimNotReady when the visit has
    no card or no billed lines.
    """
    invoice: Invoice = get_invoice(session, invoice_id)
    record = session.get(CoverageRecord, invoice.coverage_id) if invoice.coverage_id else None
    if record is None or not invoice.lines:
        raise ClaimNotReady()
    patient = _patient_facts(session, invoice.patient_id)
    encounter = store.read(session, "Encounter", invoice.encounter_id).resource
    period = encounter.get("period") or {}
    admitted = datetime.fromisoformat(str(period.get("start", "")).replace("Z", "+00:00"))
    discharged = (
        datetime.fromisoformat(str(period["end"]).replace("Z", "+00:00")) if period.get("end") else admitted
    )
    diagnosis, icds = _diagnoses(encounter)
    referral = referral_of(invoice, facility, session) or Referral.REGISTERED
    lines = []
    for line in invoice.lines:
        charge = session.get(Charge, line.charge_id)
        assert charge is not None  # a line always has its charge (foreign key)
        lines.append(
            ClaimLine(
                code=line.code,
                name=line.description,
                group=charge.xml_group or "",
                unit=charge.unit,
                quantity=line.quantity,
                unit_price=line.unit_price,
                insurance_unit_price=charge.insurance_unit_price or line.unit_price,
                total=line.total,
                covered=line.covered,
                fund=line.fund,
                copay=line.copay,
                patient_full=line.patient_full,
                ordered_at=as_utc(charge.occurred_at),
            )
        )
    birth = patient["birth_date"]
    return ClaimVisit(
        link_code=invoice.reference or str(invoice.id),
        patient_code=invoice.patient_id,
        full_name=patient["full_name"],
        national_id=patient["national_id"],
        birth_date=date.fromisoformat(birth) if birth else None,
        sex=patient["sex"],
        address=patient["address"],
        card_code=record.card_code,
        registered_facility=record.registered_facility or "",
        card_valid_from=record.valid_from,
        card_valid_to=record.valid_to,
        diagnosis=diagnosis,
        main_icd=icds[0] if icds else "",
        other_icds=icds[1:],
        patient_category=PATIENT_CATEGORY[referral],
        admitted_at=admitted,
        discharged_at=discharged,
        paid_at=invoice.paid_at,
        benefit_percent=_benefit_percent(invoice),
        facility_code=facility.code,
        department=department,
        lines=tuple(lines),
    )


def claims_between(
    session: Session,
    first_day: date,
    last_day: date,
    facility: Facility,
    *,
    department: str = "K01",
    zone: ZoneInfo = DEFAULT_ZONE,
) -> list[ClaimVisit]:
    """Return the claims of the paid, insured visits from ``first_day`` to ``last_day`` (both included).

    Visits without a card or without billed lines are left out.
    """
    invoices = session.scalars(
        select(Invoice)
        .where(
            Invoice.visit_date >= first_day,
            Invoice.visit_date <= last_day,
            Invoice.status == "paid",
            Invoice.coverage_id.is_not(None),
        )
        .order_by(Invoice.visit_date, Invoice.id)
    )
    visits = []
    for invoice in invoices:
        try:
            visits.append(claim_for_invoice(session, invoice.id, facility, department=department, zone=zone))
        except ClaimNotReady:
            continue
    return visits


class ClaimRejected(Conflict):
    """The social-insurance gateway refused a claim (not worth retrying as it is)."""

    code = "BILLING_CLAIM_REJECTED"
    message = N_("The social-insurance gateway refused the claim.")


class ClaimGatewayUnavailable(VetinhError):
    status = 503
    code = "BILLING_CLAIM_GATEWAY_UNAVAILABLE"
    message = N_("The social-insurance gateway cannot be reached; the claim will be sent again.")


class ClaimGateway:
    """Send signed claims to the social-insurance gateway, retrying when it is down or busy."""

    def __init__(
        self,
        url: str | None,
        *,
        attempts: int = 3,
        backoff_seconds: float = 0.5,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = (url or "").strip()
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout
        self._sleep = sleep

    def submit(self, document: bytes, *, link_code: str) -> str:
        """Post one visit's signed envelope; return the gateway's receipt code.

        A resend carries the same ``MA_LK`` (``link_code``), so the gateway replaces
        rather than duplicates. Raises ClaimRejected on a 4xx answer, and
        ClaimGatewayUnavailable when no URL is configured or every attempt failed.
        """
        if not self.url:
            raise ClaimGatewayUnavailable(extra={"reason": "not configured"})
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self.backoff_seconds * 2 ** (attempt - 1))
            request = urllib.request.Request(  # noqa: S310 - the operator's configured gateway endpoint
                self.url,
                data=document,
                headers={"Content-Type": "application/xml; charset=utf-8", "X-Ma-Lk": link_code},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - as above
                    answer = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500:
                    raise ClaimRejected(extra={"status": exc.code, "link_code": link_code}) from exc
                last = f"HTTP {exc.code}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
                last = type(exc).__name__
                continue
            receipt = answer.get("receipt") if isinstance(answer, dict) else None
            if isinstance(receipt, str) and receipt:
                return receipt
            last = "no receipt"
        raise ClaimGatewayUnavailable(
            extra={"reason": last, "attempts": self.attempts, "link_code": link_code}
        )
