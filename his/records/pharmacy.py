"""Find a prescription by code or QR, tell whether it may be dispensed, and dispense it.

The printed QR holds ``VTRX1|<code>|<digest>|<key>|<signature>``: the prescription code,
the SHA-256 of the signed document, the first 16 hex digits of the signer's
certificate fingerprint, and the signer's signature over the first three fields. A
pharmacy holding the hospital's certificates can check it offline; here it is also
checked against the stored record, so a forged or altered QR is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from cryptography import x509
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from fhir import services as store
from his import events
from his.errors import N_, Conflict, Gone, NotFound, ValidationFailed
from his.models import PatientSiteAccess, User
from his.records.codes import parse_code
from his.records.models import Prescription, PrescriptionItem, Signature, SigningKey
from his.records.services import Actor, now_text, patient_name, practitioner_reference
from his.records.signatures import Verification, verify
from his.records.signing import digest, sign_short, verify_short

QR_PREFIX = "VTRX1"
QUEUE_PAGE_SIZE = 20
DISPENSED_TOPIC = "medication.dispensed"


def _signature_of(session: Session, prescription: Prescription) -> Signature | None:
    return session.scalar(
        select(Signature).where(Signature.prescription_id == prescription.id).order_by(Signature.id)
    )


def qr_text(session: Session, prescription: Prescription, secret: str) -> str:
    """Return the QR content of a signed prescription.

    Raises Conflict for a prescription that is not signed yet.
    """
    signature = _signature_of(session, prescription)
    if signature is None:
        raise Conflict(N_("The prescription is not signed yet."), code="PRESCRIPTION_NOT_SIGNED")
    key = session.get(SigningKey, signature.key_id)
    assert key is not None
    signed = f"{QR_PREFIX}|{prescription.code}|{digest(signature.document.encode('utf-8'))}"
    return f"{signed}|{key.fingerprint[:16]}|{sign_short(key, secret, signed)}"


@dataclass(frozen=True)
class QrCheck:
    """What a scanned QR said and whether it is authentic."""

    code: str
    authentic: bool
    problem: str = ""


def check_qr(session: Session, text: str) -> QrCheck:
    """Check a scanned QR against the stored signature and the signer's certificate.

    Raises ValidationFailed when the text is not one of our QR codes.
    """
    parts = text.strip().split("|")
    if len(parts) != 5 or parts[0] != QR_PREFIX:
        raise ValidationFailed(
            N_("This QR code is not a prescription of ours."), fields={"q": N_("Unknown QR.")}
        )
    _prefix, raw_code, doc_digest, key_prefix, sig = parts
    code = str(parse_code(raw_code))
    prescription = session.scalar(select(Prescription).where(Prescription.code == code))
    if prescription is None:
        return QrCheck(code, False, N_("No prescription has this code."))
    signature = _signature_of(session, prescription)
    if signature is None:
        return QrCheck(code, False, N_("The prescription is not signed yet."))
    key = session.get(SigningKey, signature.key_id)
    if key is None or not key.fingerprint.startswith(key_prefix.lower()):
        return QrCheck(code, False, N_("The QR was not signed by this prescription's signer."))
    cert = x509.load_pem_x509_certificate(key.certificate_pem.encode())
    if not verify_short(cert, f"{QR_PREFIX}|{raw_code}|{doc_digest}", sig):
        return QrCheck(code, False, N_("The QR's signature is not valid: it may be forged."))
    if doc_digest != digest(signature.document.encode("utf-8")):
        return QrCheck(code, False, N_("The QR does not match the signed prescription."))
    return QrCheck(code, True)


def find(session: Session, text: str) -> tuple[Prescription, QrCheck | None]:
    """Find a prescription by its code or by a scanned QR.

    Raises ValidationFailed for text that is neither, NotFound for an unknown code.
    """
    qr = check_qr(session, text) if text.strip().startswith(QR_PREFIX + "|") else None
    code = qr.code if qr else str(parse_code(text))
    prescription = session.scalar(select(Prescription).where(Prescription.code == code))
    if prescription is None:
        raise NotFound(N_("No prescription has this code."), code="PRESCRIPTION_NOT_FOUND")
    return prescription, qr


@dataclass(frozen=True)
class LineState:
    """One prescription line as the pharmacist sees it."""

    item_id: int
    line: int
    drug_code: str
    name: str
    instructions: str
    unit: str
    quantity: Decimal
    dispensed: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.dispensed


@dataclass
class PharmacyView:
    """Everything the pharmacist must know before dispensing."""

    prescription: Prescription
    lines: list[LineState] = field(default_factory=list)
    verification: Verification | None = None
    expired: bool = False

    @property
    def signed(self) -> bool:
        return self.prescription.status == "signed"

    @property
    def signature_valid(self) -> bool:
        return self.verification is not None and self.verification.valid

    @property
    def fully_dispensed(self) -> bool:
        return bool(self.lines) and all(line.remaining <= 0 for line in self.lines)

    @property
    def partly_dispensed(self) -> bool:
        return any(line.dispensed > 0 for line in self.lines) and not self.fully_dispensed


def view(session: Session, prescription: Prescription, *, today: date) -> PharmacyView:
    """Read a prescription's lines, signature check, expiry and what was dispensed."""
    result = PharmacyView(prescription)
    items = session.scalars(
        select(PrescriptionItem)
        .where(PrescriptionItem.prescription_id == prescription.id)
        .order_by(PrescriptionItem.line)
    ).all()
    for item in items:
        resource = store.read(session, "MedicationRequest", item.medication_request_id).resource
        dosage = resource["dosageInstruction"][0]
        result.lines.append(
            LineState(
                item.id,
                item.line,
                item.drug_code,
                resource["medicationCodeableConcept"].get("text", item.drug_code),
                " ".join(filter(None, [dosage.get("text"), dosage.get("patientInstruction")])),
                resource["dispenseRequest"]["quantity"]["unit"],
                Decimal(item.quantity),
                Decimal(item.dispensed),
            )
        )
    signature = _signature_of(session, prescription)
    if signature is not None:
        result.verification = verify(session, signature)
    result.expired = prescription.valid_until is not None and prescription.valid_until < today
    return result


def dispense(
    session: Session, prescription: Prescription, quantities: dict[int, Decimal], actor: Actor, *, today: date
) -> list[str]:
    """Hand over the given quantities as MedicationDispense resources; return their ids.

    Each MedicationDispense publishes ``medication.dispensed`` (billing charges from it):
    its id is the ``dispense_id`` and the prescription line's id the ``line_id``, so a
    repeated event charges once. In a request the event leaves when the dispensing commits.

    Raises Conflict when the prescription is unsigned, its signature invalid, it expired,
    or a line would go beyond its prescribed quantity; ValidationFailed for bad amounts.
    """
    state = view(session, prescription, today=today)
    if not state.signed:
        raise Conflict(N_("The prescription is not signed yet."), code="PRESCRIPTION_NOT_SIGNED")
    if not state.signature_valid:
        raise Conflict(
            N_("The prescription's signature is not valid; do not dispense."), code="SIGNATURE_INVALID"
        )
    if state.expired:
        raise Conflict(N_("The prescription has expired."), code="PRESCRIPTION_EXPIRED")
    lines = {line.item_id: line for line in state.lines}
    errors = {}
    wanted = {k: v for k, v in quantities.items() if v != 0}
    for item_id, amount in wanted.items():
        if item_id not in lines:
            errors[f"item.{item_id}"] = N_("Not a line of this prescription.")
        elif amount < 0 or amount != amount.to_integral_value():
            errors[f"item.{item_id}"] = N_("Enter a whole number of units.")
    if not wanted and not errors:
        errors["quantity"] = N_("Enter how much to dispense.")
    if errors:
        raise ValidationFailed(N_("The amounts to dispense are not valid."), fields=errors)
    who = practitioner_reference(session, actor)
    when = now_text()
    created = []
    for item_id, amount in sorted(wanted.items()):
        line = lines[item_id]
        # One atomic statement: two pharmacists dispensing at once cannot exceed the quantity.
        changed = session.execute(  # type: ignore[attr-defined]
            update(PrescriptionItem)
            .where(
                PrescriptionItem.id == item_id,
                PrescriptionItem.dispensed + amount <= PrescriptionItem.quantity,
            )
            .values(dispensed=PrescriptionItem.dispensed + amount)
        ).rowcount
        if changed != 1:
            raise Conflict(
                N_("%(drug)s: only %(remaining)s %(unit)s remain to dispense.")
                % {"drug": line.name, "remaining": f"{line.remaining.normalize():f}", "unit": line.unit},
                code="DISPENSE_EXCEEDS_PRESCRIPTION",
                fields={f"item.{item_id}": N_("More than prescribed.")},
            )
        item = session.get(PrescriptionItem, item_id)
        assert item is not None
        request = store.read(session, "MedicationRequest", item.medication_request_id).resource
        complete = line.dispensed + amount >= line.quantity
        resource = {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": request["medicationCodeableConcept"],
            "subject": request["subject"],
            "context": request["encounter"],
            "performer": [{"actor": {"reference": who}}],
            "authorizingPrescription": [{"reference": f"MedicationRequest/{item.medication_request_id}"}],
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": ("FF" if line.dispensed == 0 else "RF") + ("C" if complete else "P"),
                    }
                ]
            },
            "quantity": {"value": amount, "unit": line.unit},
            "whenHandedOver": when,
            "dosageInstruction": request.get("dosageInstruction", []),
        }
        dispense_id = store.create(session, resource).id
        created.append(dispense_id)
        events.publish(
            DISPENSED_TOPIC,
            {
                "dispense_id": dispense_id,
                "encounter_id": prescription.encounter_id,
                "patient_id": prescription.patient_id,
                "dispensed_at": when,
                "items": [{"line_id": str(item.id), "item_code": item.drug_code, "quantity": int(amount)}],
            },
        )
    session.expire_all()
    return created


@dataclass(frozen=True)
class QueueEntry:
    """A signed prescription waiting at the pharmacy counter."""

    code: str
    patient_id: str
    patient_name: str
    doctor: str
    signed_at: datetime | None
    valid_until: date | None
    partly_dispensed: bool


@dataclass(frozen=True)
class QueuePage:
    """One page of the pharmacy queue, newest first."""

    entries: list[QueueEntry]
    page: int
    pages: int
    total: int


def waiting(
    session: Session, site_id: int, *, today: date, page: int = 1, per_page: int = QUEUE_PAGE_SIZE
) -> QueuePage:
    """Return the prescriptions a site's pharmacy may dispense now, newest signature first.

    Signed, not expired and not fully dispensed prescriptions of the patients the site may
    see (its own, and those another site shared with it), which is the rule the
    dispensing page applies. Raises ValidationFailed (field ``page``) for a page below 1.
    """
    if page < 1:
        raise ValidationFailed(N_("The page must be 1 or more."), fields={"page": N_("Invalid.")})
    something_left = (
        select(PrescriptionItem.id)
        .where(
            PrescriptionItem.prescription_id == Prescription.id,
            PrescriptionItem.dispensed < PrescriptionItem.quantity,
        )
        .exists()
    )
    visible = select(PatientSiteAccess.patient_id).where(PatientSiteAccess.site_id == site_id)
    conditions = (
        Prescription.status == "signed",
        or_(Prescription.valid_until.is_(None), Prescription.valid_until >= today),
        something_left,
        Prescription.patient_id.in_(visible),
    )
    total = session.scalar(select(func.count()).select_from(Prescription).where(*conditions)) or 0
    pages = max(1, -(-total // per_page))
    rows = session.execute(
        select(Prescription, User.full_name)
        .join(User, User.id == Prescription.prescriber_id)
        .where(*conditions)
        .order_by(Prescription.signed_at.desc(), Prescription.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    names: dict[str, str] = {}
    entries = []
    for prescription, doctor in rows:
        if prescription.patient_id not in names:
            try:
                resource = store.read(session, "Patient", prescription.patient_id).resource
            except (NotFound, Gone):
                resource = {}
            names[prescription.patient_id] = patient_name(resource)
        partly = session.scalar(
            select(PrescriptionItem.id)
            .where(PrescriptionItem.prescription_id == prescription.id, PrescriptionItem.dispensed > 0)
            .limit(1)
        )
        entries.append(
            QueueEntry(
                prescription.code,
                prescription.patient_id,
                names[prescription.patient_id],
                doctor,
                prescription.signed_at,
                prescription.valid_until,
                partly is not None,
            )
        )
    return QueuePage(entries, page, pages, total)
