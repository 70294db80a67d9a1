"""Keep each patient's BHYT card as a Coverage, checked by the rules and, when asked, by the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import fhir_mapping
from billing.bhyt import BhytCard, ensure_valid_on, read_card
from billing.gateway import EligibilityResult
from billing.models import CoverageRecord
from billing.rules import rules_on
from fhir import services as store
from his.db import utcnow


@dataclass(frozen=True)
class CardEntry:
    """A card as typed at the desk."""

    card_code: str
    valid_from: date | None = None
    valid_to: date | None = None
    registered_facility: str | None = None
    five_years_from: date | None = None


def entry_from_gateway(result: EligibilityResult) -> CardEntry:
    """Turn a gateway answer (code 000) into the card details it confirmed.

    Raises the gateway's InvalidCard subclass when the answer is not 000.
    """
    result.raise_for_code()
    return CardEntry(
        card_code=result.card_code or "",
        valid_from=result.valid_from,
        valid_to=result.valid_to,
        registered_facility=result.registered_facility,
        five_years_from=result.five_years_from,
    )


def to_card(record: CoverageRecord) -> BhytCard:
    """Return the checked card of a stored coverage."""
    return BhytCard(
        code=record.card_code,
        valid_from=record.valid_from,
        valid_to=record.valid_to,
        registered_facility=record.registered_facility,
    )


def register_card(
    session: Session,
    patient_id: str,
    entry: CardEntry,
    *,
    visit_date: date,
    gateway_code: str | None = None,
) -> CoverageRecord:
    """Check a card by the rules of ``visit_date`` and make it the patient's active Coverage.

    The patient's earlier active cards are cancelled (a patient has one card at a time).
    Never commits.

    Raises InvalidCard and its subclasses, naming the part that is wrong (format 051,
    province 052, benefit digit 053), CardExpired (010) when the card does not cover the
    visit date, and ValidationFailed when the patient does not exist.
    """
    card = read_card(
        entry.card_code,
        valid_from=entry.valid_from,
        valid_to=entry.valid_to,
        registered_facility=entry.registered_facility,
        rules=rules_on(visit_date),
    )
    ensure_valid_on(card, visit_date)
    for earlier in session.scalars(
        select(CoverageRecord).where(
            CoverageRecord.patient_id == patient_id, CoverageRecord.status == "active"
        )
    ):
        earlier.status = "cancelled"
        resource = store.read(session, "Coverage", earlier.coverage_resource_id).resource
        resource["status"] = "cancelled"
        store.update(session, "Coverage", earlier.coverage_resource_id, resource)
    stored = store.create(
        session,
        fhir_mapping.coverage(
            patient_id=patient_id,
            card_code=card.code,
            valid_from=card.valid_from,
            valid_to=card.valid_to,
            registered_facility=card.registered_facility,
            five_years_from=entry.five_years_from,
        ),
    )
    record = CoverageRecord(
        patient_id=patient_id,
        coverage_resource_id=stored.id,
        card_code=card.code,
        valid_from=card.valid_from,
        valid_to=card.valid_to,
        registered_facility=card.registered_facility,
        five_years_from=entry.five_years_from,
        status="active",
        gateway_code=gateway_code,
        checked_at=utcnow() if gateway_code else None,
    )
    session.add(record)
    session.flush()
    return record


def active_coverage(session: Session, patient_id: str, day: date) -> CoverageRecord | None:
    """Return the patient's active card when it covers ``day``, else None (the patient pays all)."""
    record = session.scalars(
        select(CoverageRecord)
        .where(CoverageRecord.patient_id == patient_id, CoverageRecord.status == "active")
        .order_by(CoverageRecord.id.desc())
        .limit(1)
    ).first()
    if record is None or not to_card(record).is_valid_on(day):
        return None
    return record
