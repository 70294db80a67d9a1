"""Send signed prescriptions to the national prescription system through an outbox.

A signed prescription gets one outbox row with the payload of ``VIETNAM.md``. The
sender posts it to the configured endpoint: a 2xx marks it sent, a 4xx marks it
rejected with the system's error list (a sent prescription is never edited, so a
rejection needs a new prescription), a timeout or 5xx is retried later with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir import services as store
from his.db import as_utc, utcnow
from his.identifiers import NATIONAL_ID_SYSTEM
from his.records.catalogue import DRUG_SYSTEM
from his.records.models import OutboxMessage, Prescription, PrescriptionItem, Signature
from his.records.services import patient_name

INSURANCE_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"
MAX_ATTEMPTS = 8
GENDER_CODES = {"male": 1, "female": 2, "other": 3}


def _dmy(value: str | None) -> str:
    if not value:
        return ""
    try:
        return date.fromisoformat(value[:10]).strftime("%d/%m/%Y")
    except ValueError:
        return ""


def build_payload(session: Session, prescription: Prescription, zone: Any = None) -> dict[str, Any]:
    """Return the national system's payload for a signed prescription."""
    patient = store.read(session, "Patient", prescription.patient_id).resource
    identifiers = {i.get("system"): i.get("value") for i in patient.get("identifier", [])}
    conditions = store.search(
        session, "Condition", [("encounter", f"Encounter/{prescription.encounter_id}"), ("_count", "100")]
    )
    items = session.scalars(
        select(PrescriptionItem)
        .where(PrescriptionItem.prescription_id == prescription.id)
        .order_by(PrescriptionItem.line)
    ).all()
    drugs = []
    for item in items:
        request = store.read(session, "MedicationRequest", item.medication_request_id).resource
        concept = request["medicationCodeableConcept"]
        code = next((c["code"] for c in concept["coding"] if c.get("system") == DRUG_SYSTEM), item.drug_code)
        dosage = request["dosageInstruction"][0]
        drugs.append(
            {
                "ma_thuoc": code,
                "biet_duoc": concept.get("text", ""),
                "ten_thuoc": concept.get("text", ""),
                "don_vi_tinh": request["dispenseRequest"]["quantity"]["unit"],
                "so_luong": int(item.quantity),
                "cach_dung": " ".join(
                    filter(None, [dosage.get("text", ""), dosage.get("patientInstruction", "")])
                ),
            }
        )
    signature = session.scalar(select(Signature).where(Signature.prescription_id == prescription.id))
    signed = as_utc(prescription.signed_at or utcnow())
    if zone is not None:
        signed = signed.astimezone(zone)
    address = (patient.get("address") or [{}])[0].get("text", "")
    return {
        "loai_don_thuoc": prescription.kind,
        "ma_don_thuoc": prescription.code,
        "ho_ten_benh_nhan": patient_name(patient),
        "ma_dinh_danh_cong_dan": identifiers.get(NATIONAL_ID_SYSTEM, ""),
        "ngay_sinh_benh_nhan": _dmy(patient.get("birthDate")),
        "can_nang": float(prescription.weight_kg) if prescription.weight_kg is not None else None,
        "gioi_tinh": GENDER_CODES.get(patient.get("gender", ""), 3),
        "ma_so_the_bao_hiem_y_te": identifiers.get(INSURANCE_SYSTEM, ""),
        "dia_chi": address,
        "chan_doan": [
            {
                "ma_chan_doan": c.resource["code"]["coding"][0]["code"],
                "ten_chan_doan": c.resource["code"].get("text", ""),
            }
            for c in conditions.matches
        ],
        "thong_tin_don_thuoc": drugs,
        "loi_dan": prescription.advice or "",
        "ngay_tai_kham": prescription.follow_up.strftime("%d/%m/%Y") if prescription.follow_up else "",
        "ngay_gio_ke_don": signed.strftime("%Y-%m-%d %H:%M:%S"),
        "signature": signature.provenance_id if signature else "",
    }


def enqueue(session: Session, prescription: Prescription) -> OutboxMessage:
    """Queue a signed prescription for the national system (once per prescription)."""
    existing = session.scalar(select(OutboxMessage).where(OutboxMessage.prescription_id == prescription.id))
    if existing is not None:
        return existing
    row = OutboxMessage(
        prescription_id=prescription.id, payload=build_payload(session, prescription), status="pending"
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class SendResult:
    """How one delivery attempt ended."""

    message_id: int
    status: str
    detail: str = ""


def backoff(attempts: int) -> timedelta:
    """Return how long to wait before the next attempt (1, 2, 4... minutes, at most an hour)."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 60))


def send_pending(
    session: Session, endpoint: str, *, token: str = "", timeout: float = 10.0, now: datetime | None = None
) -> list[SendResult]:
    """Post every due outbox message once and record the outcome (never raises for the network)."""
    moment = now or utcnow()
    due = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.status.in_(("pending", "retry")), OutboxMessage.next_attempt_at <= moment)
        .order_by(OutboxMessage.id)
        .limit(100)
    ).all()
    results = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for message in due:
        message.attempts += 1
        try:
            response = requests.post(endpoint, json=message.payload, timeout=timeout, headers=headers)
        except requests.RequestException as exc:
            results.append(_retry(message, moment, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text[:1000]}
        message.response = body if isinstance(body, dict) else {"body": body}
        if 200 <= response.status_code < 300:
            message.status, message.sent_at, message.last_error = "sent", moment, None
            results.append(SendResult(message.id, "sent"))
        elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            message.status = "rejected"
            message.last_error = f"HTTP {response.status_code}"
            results.append(SendResult(message.id, "rejected", message.last_error))
        else:
            results.append(_retry(message, moment, f"HTTP {response.status_code}"))
    session.flush()
    return results


def _retry(message: OutboxMessage, moment: datetime, error: str) -> SendResult:
    message.last_error = error
    if message.attempts >= MAX_ATTEMPTS:
        message.status = "failed"
    else:
        message.status = "retry"
        message.next_attempt_at = moment + backoff(message.attempts)
    return SendResult(message.id, message.status, error)


def errors_of(message: OutboxMessage) -> list[str]:
    """Return the error list the national system answered with, as text lines."""
    body = message.response or {}
    found = body.get("errors") or body.get("loi") or []
    lines = []
    for item in found if isinstance(found, list) else [found]:
        if isinstance(item, dict):
            lines.append(": ".join(str(v) for v in item.values()))
        else:
            lines.append(str(item))
    return lines
