"""Lay out a signed prescription as the Vietnamese "ĐƠN THUỐC" on an A5 PDF with its QR.

The sheet is a legal document of Vietnamese practice, so its wording is Vietnamese
whatever the user's language. :func:`sheet_of` gathers what the sheet shows (a pure
value, also handy for tests); :func:`render_pdf` draws it with ``his.pdf``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import segno
from flask import Flask
from sqlalchemy.orm import Session

from fhir import services as store
from his.db import as_utc
from his.errors import N_, Conflict
from his.models import Site, User
from his.pdf import new_document
from his.records import pharmacy
from his.records.dosing import age_in_months
from his.records.models import Prescription, PrescriptionItem
from his.records.national import INSURANCE_SYSTEM
from his.records.services import patient_name

CHILD_MONTHS = 72
# A QR of ~160 characters is version 10 (57 modules); 38 mm gives 0.6 mm modules with the
# quiet zone, which phone cameras read from a printed sheet at arm's length.
QR_SIZE_MM = 38.0
QR_PIXELS_PER_MODULE = 10
SEX = {"male": "Nam", "female": "Nữ"}


@dataclass(frozen=True)
class SheetLine:
    """One numbered drug of the printed prescription."""

    number: int
    name: str
    quantity: Decimal
    unit: str
    how_to_take: str


@dataclass
class PrescriptionSheet:
    """Everything the printed prescription shows."""

    code: str
    facility_name: str
    facility_code: str
    patient_name: str
    age_text: str
    sex: str
    address: str
    insurance_number: str
    weight_kg: Decimal | None
    guardian_name: str
    diagnoses: list[tuple[str, str]]
    lines: list[SheetLine]
    advice: str
    follow_up: date | None
    signed_at: datetime
    doctor_name: str
    qr_text: str
    child: bool = False


def _age_text(birth: str | None, on: date) -> tuple[str, bool]:
    if not birth or len(birth) < 10:
        return "", False
    try:
        born = date.fromisoformat(birth[:10])
    except ValueError:
        return "", False
    months = age_in_months(born, on)
    if months < CHILD_MONTHS:
        return f"{months} tháng", True
    return f"{months // 12} tuổi", False


def sheet_of(
    session: Session, prescription: Prescription, *, secret: str, zone: ZoneInfo
) -> PrescriptionSheet:
    """Gather what the printed prescription shows, ages and dates as of its signing.

    Raises Conflict (PRESCRIPTION_NOT_SIGNED) for a prescription that is not signed.
    """
    if prescription.status != "signed" or prescription.signed_at is None:
        raise Conflict(N_("The prescription is not signed yet."), code="PRESCRIPTION_NOT_SIGNED")
    qr = pharmacy.qr_text(session, prescription, secret)
    signed_at = as_utc(prescription.signed_at).astimezone(zone)
    patient = store.read(session, "Patient", prescription.patient_id).resource
    identifiers = {i.get("system"): i.get("value") for i in patient.get("identifier", [])}
    age_text, child = _age_text(patient.get("birthDate"), signed_at.date())
    conditions = store.search(
        session, "Condition", [("encounter", f"Encounter/{prescription.encounter_id}"), ("_count", "100")]
    ).matches
    diagnoses = []
    for condition in conditions:
        concept = condition.resource.get("code", {})
        coded = (concept.get("coding") or [{}])[0]
        diagnoses.append((coded.get("code", ""), concept.get("text") or coded.get("display", "")))
    state = pharmacy.view(session, prescription, today=signed_at.date())
    lines = []
    for number, line in enumerate(state.lines, start=1):
        item = session.get(PrescriptionItem, line.item_id)
        assert item is not None
        request = store.read(session, "MedicationRequest", item.medication_request_id).resource
        dosage = (request.get("dosageInstruction") or [{}])[0]
        route = (dosage.get("route") or {}).get("text", "")
        how = dosage.get("text", "")
        if route:
            how = f"{route.capitalize()}: {how}" if how else route.capitalize()
        if dosage.get("patientInstruction"):
            how = f"{how}. {dosage['patientInstruction']}" if how else dosage["patientInstruction"]
        lines.append(SheetLine(number, line.name, line.quantity, line.unit, how))
    site = session.get(Site, prescription.site_id)
    doctor = session.get(User, prescription.prescriber_id)
    return PrescriptionSheet(
        code=prescription.code,
        facility_name=site.name if site else "",
        facility_code=prescription.facility_code,
        patient_name=patient_name(patient),
        age_text=age_text,
        sex=SEX.get(patient.get("gender", ""), "Khác"),
        address=(patient.get("address") or [{}])[0].get("text", ""),
        insurance_number=identifiers.get(INSURANCE_SYSTEM, "") or "",
        weight_kg=prescription.weight_kg,
        guardian_name=prescription.guardian_name or "",
        diagnoses=diagnoses,
        lines=lines,
        advice=prescription.advice or "",
        follow_up=prescription.follow_up,
        signed_at=signed_at,
        doctor_name=doctor.full_name if doctor else "",
        qr_text=qr,
        child=child,
    )


def qr_png(text: str) -> bytes:
    """Return the QR of ``text`` as PNG bytes (error correction M, a 4-module quiet zone)."""
    buffer = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buffer, kind="png", scale=QR_PIXELS_PER_MODULE, border=4)
    return buffer.getvalue()


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"


def render_pdf(app: Flask, sheet: PrescriptionSheet) -> bytes:
    """Draw the prescription on one A5 page (more if the drugs need it) and return the PDF.

    Raises ConfigurationError when the PDF fonts are not installed.
    """
    pdf = new_document(app, page_format="A5", title=f"Đơn thuốc {sheet.code}")
    pdf.set_margins(10, 10, 10)
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    top = pdf.get_y()
    qr_x = pdf.w - pdf.r_margin - QR_SIZE_MM
    pdf.image(io.BytesIO(qr_png(sheet.qr_text)), x=qr_x, y=top, w=QR_SIZE_MM, h=QR_SIZE_MM)
    pdf.set_xy(qr_x - 4, top + QR_SIZE_MM)
    pdf.set_font(size=7)
    pdf.cell(QR_SIZE_MM + 8, 3.5, sheet.code, align="C")
    left = width - QR_SIZE_MM - 4
    pdf.set_xy(pdf.l_margin, top)
    pdf.set_font(style="B", size=10)
    pdf.multi_cell(left, 5, sheet.facility_name.upper(), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(size=9)
    pdf.multi_cell(left, 4.5, f"Mã cơ sở: {sheet.facility_code}", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(left, 4.5, f"Mã đơn thuốc: {sheet.code}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(max(pdf.get_y(), top + 18))
    pdf.set_font(style="B", size=16)
    pdf.cell(left, 10, "ĐƠN THUỐC", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(max(pdf.get_y(), top + QR_SIZE_MM + 5))

    def row(label: str, value: str, *, bold: bool = False) -> None:
        pdf.set_font(size=9.5)
        pdf.write(5, f"{label}: ")
        pdf.set_font(style="B" if bold else "", size=9.5)
        pdf.write(5, value)
        pdf.ln(5.5)

    row("Họ tên", sheet.patient_name, bold=True)
    person = [f"Tuổi: {sheet.age_text}" if sheet.age_text else "", f"Giới tính: {sheet.sex}"]
    if sheet.child and sheet.weight_kg is not None:
        person.append(f"Cân nặng: {_quantity(Decimal(sheet.weight_kg))} kg")
    pdf.set_font(size=9.5)
    pdf.cell(width, 5.5, "    ".join(p for p in person if p), new_x="LMARGIN", new_y="NEXT")
    if sheet.child and sheet.guardian_name:
        row("Người đưa trẻ đến khám", sheet.guardian_name)
    if sheet.address:
        row("Địa chỉ", sheet.address)
    if sheet.insurance_number:
        row("Số thẻ BHYT", sheet.insurance_number)
    pdf.set_font(size=9.5)
    diagnosis = "; ".join(f"{text} ({code})" if code else text for code, text in sheet.diagnoses)
    pdf.multi_cell(width, 5, f"Chẩn đoán: {diagnosis or '—'}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(style="B", size=10)
    pdf.cell(width, 6, "Thuốc điều trị:", new_x="LMARGIN", new_y="NEXT")
    for line in sheet.lines:
        pdf.set_font(style="B", size=9.5)
        amount = f"{_quantity(line.quantity)} {line.unit}"
        pdf.cell(width - 30, 5.5, f"{line.number}. {line.name}")
        pdf.set_font(size=9.5)
        pdf.cell(30, 5.5, f"SL: {amount}", align="R", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(style="I", size=9)
        pdf.set_x(pdf.l_margin + 5)
        pdf.multi_cell(width - 5, 4.5, line.how_to_take or "—", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    pdf.ln(1)
    pdf.set_font(size=9.5)
    if sheet.advice:
        pdf.multi_cell(width, 5, f"Lời dặn: {sheet.advice}", new_x="LMARGIN", new_y="NEXT")
    if sheet.follow_up:
        pdf.cell(width, 5.5, f"Hẹn tái khám: {sheet.follow_up:%d/%m/%Y}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    half = width / 2
    when = sheet.signed_at
    pdf.set_x(pdf.l_margin + half)
    pdf.set_font(style="I", size=9)
    pdf.cell(half, 5, f"Ngày {when.day:02d} tháng {when.month:02d} năm {when.year}", align="C")
    pdf.ln(5)
    pdf.set_x(pdf.l_margin + half)
    pdf.set_font(style="B", size=9.5)
    pdf.cell(half, 5, "BÁC SĨ KHÁM BỆNH", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(pdf.l_margin + half)
    pdf.set_font(size=8.5)
    pdf.cell(half, 5, f"Đã ký số lúc {when:%H:%M %d/%m/%Y}", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(pdf.l_margin + half)
    pdf.set_font(style="B", size=10)
    pdf.cell(half, 6, sheet.doctor_name, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(size=7.5)
    pdf.multi_cell(
        width,
        3.8,
        "Khám lại xin mang theo đơn này. Nhà thuốc quét mã QR để kiểm tra mã đơn và chữ ký số "
        "của bác sĩ (chứng thư công khai của cơ sở), không cần kết nối mạng.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    return bytes(pdf.output())
