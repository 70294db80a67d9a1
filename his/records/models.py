"""Tables of medical records: drug catalogue, signing keys, prescriptions, signatures, outbox.

Clinical content (Encounter, Observation, MedicationRequest, Provenance...) lives in the
FHIR store; these rows hold what operations need: who may sign with which key, which
codes a facility used, how much of each line was dispensed, and what waits to be sent.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from his.db import Base, utcnow


class CatalogueDrug(Base):
    """A drug of the hospital's catalogue (seeded from the shipped CSV, extended by import)."""

    __tablename__ = "records_drugs"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    search_text: Mapped[str] = mapped_column(String(400), index=True)
    antibiotic: Mapped[bool] = mapped_column(Boolean, default=False)
    row: Mapped[dict[str, Any]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SigningKey(Base):
    """A key pair with its X.509 certificate: a site's CA, or one signer's key.

    The private key is encrypted with AES-GCM under a key derived from the app's secret.
    """

    __tablename__ = "records_signing_keys"
    __table_args__ = (Index("ix_records_signing_keys_owner", "site_id", "user_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(10), default="issued")
    subject: Mapped[str] = mapped_column(String(300))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    certificate_pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    encrypted_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prescription(Base):
    """An e-prescription: its national code and the state the pharmacy and outbox need."""

    __tablename__ = "records_prescriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(14), unique=True)
    facility_code: Mapped[str] = mapped_column(String(5))
    kind: Mapped[str] = mapped_column(String(1))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    encounter_id: Mapped[str] = mapped_column(String(64), index=True)
    prescriber_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(12), default="draft")
    days: Mapped[int] = mapped_column(Integer)
    weight_kg: Mapped[Decimal | None] = mapped_column(Numeric(6, 2))
    guardian_name: Mapped[str | None] = mapped_column(String(200))
    advice: Mapped[str | None] = mapped_column(Text)
    follow_up: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    valid_until: Mapped[date | None] = mapped_column(Date)


class PrescriptionItem(Base):
    """One line of a prescription, with what was dispensed so far (never above ``quantity``)."""

    __tablename__ = "records_prescription_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    prescription_id: Mapped[int] = mapped_column(
        ForeignKey("records_prescriptions.id", ondelete="CASCADE"), index=True
    )
    line: Mapped[int] = mapped_column(Integer)
    drug_code: Mapped[str] = mapped_column(String(40))
    medication_request_id: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[Decimal] = mapped_column(Numeric(12, 3))
    dispensed: Mapped[Decimal] = mapped_column(Numeric(12, 3), default=Decimal(0))


class Signature(Base):
    """A signature over exact versions of resources, carried by a FHIR Provenance."""

    __tablename__ = "records_signatures"

    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[str] = mapped_column(String(64), index=True)
    prescription_id: Mapped[int | None] = mapped_column(ForeignKey("records_prescriptions.id"), index=True)
    provenance_id: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("records_signing_keys.id"))
    signer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    targets: Mapped[list[str]] = mapped_column(JSON)
    document: Mapped[str] = mapped_column(Text)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("records_signatures.id"))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """A prescription waiting to reach the national prescription system, with its attempts."""

    __tablename__ = "records_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    prescription_id: Mapped[int] = mapped_column(ForeignKey("records_prescriptions.id"), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PerformedOrder(Base):
    """An order that was carried out: its ServiceRequest and the Procedure recording it.

    One row per ServiceRequest (unique), so two people marking one order at once make
    one Procedure and one charge; the Procedure in the store is the clinical record.
    """

    __tablename__ = "records_performed_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    service_request_id: Mapped[str] = mapped_column(String(64), unique=True)
    procedure_id: Mapped[str] = mapped_column(String(64))
    encounter_id: Mapped[str] = mapped_column(String(64), index=True)
    performer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    performed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
