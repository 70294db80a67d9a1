"""Collect payment: the VietQR request for an invoice, cash and card at the desk, the bank's notices.

A bank notice is trusted only with a valid HMAC-SHA256 of its raw body, is kept once per
bank transaction id (a unique constraint, so a replay or a concurrent copy finds the
first one and credits nothing), and is credited only when its note names an open
invoice and its amount is exactly what is owed. Anything else (partial, excess,
unknown reference, a closed invoice) waits in the cashier's review queue: never lost,
never credited twice. The payment that settles an invoice numbers its receipt
(``billing.receipts``) in the same transaction.

The notice's JSON (what a bank adapter hands us)::

    {"transaction_id": "FT26327123456", "amount": 150000,
     "description": "VIENPHI VP2026000123", "account": "0011001234567",
     "transacted_at": "2026-11-23T08:30:00+07:00"}

signed in the header ``X-Signature: sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.invoices import (
    Invoice,
    InvoiceClosed,
    ensure_collectable,
    get_invoice,
    invoice_by_reference,
    settle,
)
from billing.models import BankNotification, Payment, Refund
from billing.outbox import queue_paid_invoice
from billing.receipts import issue_receipt
from billing.vietqr import build_payload
from fhir import services as store
from his import events
from his.db import utcnow
from his.errors import N_, ConfigurationError, Conflict, NotFound, Unauthorized, ValidationFailed

REFERENCE_PATTERN = re.compile(r"VP\s*([0-9]{4})\s*([0-9]{6})", re.IGNORECASE)
NOTE_PREFIX = "VIENPHI"
SIGNATURE_HEADER = "X-Signature"
DESK_CHANNELS = ("cash", "card")


class BadSignature(Unauthorized):
    code = "BILLING_BAD_SIGNATURE"
    message = N_("The notification's signature does not match its body.")


class InvalidNotification(ValidationFailed):
    code = "BILLING_INVALID_NOTIFICATION"
    message = N_("The payment notification is not valid.")


class InvalidPayment(ValidationFailed):
    code = "BILLING_INVALID_PAYMENT"
    message = N_("The payment is not valid.")


class ReviewNotFound(NotFound):
    code = "BILLING_REVIEW_NOT_FOUND"
    message = N_("There is no such transfer waiting for review.")


class NothingToPay(Conflict):
    code = "BILLING_NOTHING_TO_PAY"
    message = N_("Nothing is owed on this invoice.")


@dataclass(frozen=True)
class BankAccount:
    """The hospital's account that VietQR transfers go to."""

    bank_bin: str
    account: str


@dataclass(frozen=True)
class Transfer:
    """A checked bank notice."""

    transaction_id: str
    amount: Decimal
    description: str
    account: str | None
    transacted_at: datetime | None


@dataclass(frozen=True)
class NotificationOutcome:
    """What became of a notice: credited, held for review, or a replay of an earlier one."""

    notification: BankNotification
    replayed: bool
    invoice: Invoice | None

    @property
    def status(self) -> str:
        return "duplicate" if self.replayed else self.notification.status


def transfer_note(invoice: Invoice) -> str:
    """Return the note a patient's transfer carries: ``VIENPHI VP2026000123``."""
    return f"{NOTE_PREFIX} {invoice.reference}"


def vietqr_payload(session: Session, invoice: Invoice, account: BankAccount | None) -> str:
    """Return the dynamic VietQR payload for exactly what the invoice still owes.

    Raises ConfigurationError when no bank account is configured, UnpricedCharges while a
    charge has no price, NothingToPay when nothing is owed, and InvalidVietQR for a bad
    configured BIN or account.
    """
    if account is None:
        raise ConfigurationError(N_("No bank account is configured for VietQR payments."))
    ensure_collectable(session, invoice)
    if invoice.balance <= 0:
        raise NothingToPay()
    return build_payload(
        account.bank_bin, account.account, amount=invoice.balance, note=transfer_note(invoice)
    )


def sign(body: bytes, secret: str) -> str:
    """Return the signature header value of a body: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str | None) -> None:
    """Check the notice's HMAC-SHA256 over the raw body in constant time.

    Raises ConfigurationError when no secret is configured and BadSignature when the
    header is missing or does not match.
    """
    if not secret:
        raise ConfigurationError(N_("No secret is configured for bank notifications."))
    given = (header or "").strip()
    given = given.removeprefix("sha256=")
    expected = sign(body, secret).removeprefix("sha256=")
    if not given or not hmac.compare_digest(
        given.lower().encode("ascii", "replace"), expected.encode("ascii")
    ):
        raise BadSignature()


def whole_dong(value: object, field: str, error: type[ValidationFailed] = InvalidPayment) -> Decimal:
    """Return a positive whole number of đồng.

    Raises ``error`` naming ``field`` for a negative, zero, fractional or non-numeric amount.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise error(N_("The amount must be a whole number of đồng."), fields={field: "not a number"})
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise error(
            N_("The amount must be a whole number of đồng."), fields={field: "not a number"}
        ) from None
    if not amount.is_finite() or amount != amount.to_integral_value():
        raise error(N_("The amount must be a whole number of đồng."), fields={field: "fractional"})
    if amount <= 0:
        raise error(N_("The amount must be greater than zero."), fields={field: "not positive"})
    return amount.quantize(Decimal(1))


def read_transfer(body: bytes) -> Transfer:
    """Read a signed notice's JSON.

    Raises InvalidNotification naming the field that is missing or wrong.
    """
    try:
        data = json.loads(body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise InvalidNotification(N_("The body is not JSON."), fields={"body": "not JSON"}) from None
    if not isinstance(data, dict):
        raise InvalidNotification(fields={"body": "not an object"})
    transaction_id = data.get("transaction_id")
    if not isinstance(transaction_id, str | int) or not str(transaction_id).strip():
        raise InvalidNotification(fields={"transaction_id": "required"})
    if len(str(transaction_id)) > 100:
        raise InvalidNotification(fields={"transaction_id": "too long"})
    amount = whole_dong(data.get("amount"), "amount", InvalidNotification)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise InvalidNotification(fields={"description": "not text"})
    transacted_at: datetime | None = None
    if data.get("transacted_at"):
        try:
            transacted_at = datetime.fromisoformat(str(data["transacted_at"]).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidNotification(fields={"transacted_at": "not an ISO 8601 time"}) from None
        if transacted_at.tzinfo is None:
            transacted_at = transacted_at.replace(tzinfo=UTC)
    account = data.get("account")
    return Transfer(
        transaction_id=str(transaction_id).strip(),
        amount=amount,
        description=description[:500],
        account=str(account)[:30] if account else None,
        transacted_at=transacted_at,
    )


def find_reference(description: str) -> str | None:
    """Return the invoice reference a transfer note carries (banks may drop or add spaces)."""
    match = REFERENCE_PATTERN.search(description)
    return f"VP{match.group(1)}{match.group(2)}" if match else None


def _by_transaction(session: Session, transaction_id: str) -> BankNotification | None:
    return session.scalars(
        select(BankNotification).where(BankNotification.transaction_id == transaction_id)
    ).first()


def _credit(
    session: Session,
    invoice: Invoice,
    amount: Decimal,
    channel: str,
    *,
    recorded_by: str | None = None,
    notification: BankNotification | None = None,
    terminal_reference: str | None = None,
) -> Payment:
    payment = Payment(
        invoice_id=invoice.id,
        channel=channel,
        amount=amount,
        recorded_by=recorded_by,
        notification_id=notification.id if notification is not None else None,
        terminal_reference=terminal_reference,
    )
    session.add(payment)
    invoice.amount_paid = invoice.amount_paid + amount
    settle(invoice)
    session.flush()
    if invoice.status == "paid":
        issue_receipt(session, invoice)
    queue_paid_invoice(session, invoice)
    if invoice.invoice_resource_id:
        resource = store.read(session, "Invoice", invoice.invoice_resource_id).resource
        resource["status"] = "balanced" if invoice.status == "paid" else "issued"
        store.update(session, "Invoice", invoice.invoice_resource_id, resource)
    events.publish(
        "payment.received",
        {
            "invoice_id": invoice.id,
            "reference": invoice.reference,
            "encounter_id": invoice.encounter_id,
            "patient_id": invoice.patient_id,
            "channel": channel,
            "amount": str(amount),
            "balance": str(invoice.balance),
            "status": invoice.status,
        },
    )
    return payment


def receive_notification(session: Session, transfer: Transfer, raw_body: str) -> NotificationOutcome:
    """Keep a bank notice once and credit it when it pays exactly what an open invoice owes.

    A notice whose transaction id was seen before (a replay, a retry, a concurrent copy)
    returns the first notice with ``replayed=True`` and changes nothing. Never commits.
    """
    earlier = _by_transaction(session, transfer.transaction_id)
    if earlier is not None:
        return NotificationOutcome(earlier, replayed=True, invoice=_invoice_of(session, earlier))
    try:
        with session.begin_nested():
            notification = BankNotification(
                transaction_id=transfer.transaction_id,
                amount=transfer.amount,
                description=transfer.description,
                account=transfer.account,
                transacted_at=transfer.transacted_at,
                body=raw_body,
                status="review",
                review_reason="unmatched",
            )
            session.add(notification)
            session.flush()
    except IntegrityError:
        winner = _by_transaction(session, transfer.transaction_id)
        if winner is None:
            raise
        return NotificationOutcome(winner, replayed=True, invoice=_invoice_of(session, winner))
    reference = find_reference(transfer.description)
    invoice = invoice_by_reference(session, reference) if reference else None
    if invoice is None:
        return NotificationOutcome(notification, replayed=False, invoice=None)
    invoice = get_invoice(session, invoice.id, lock=True)
    notification.invoice_id = invoice.id
    if invoice.status == "paid" or invoice.balance <= 0:
        notification.review_reason = "closed"
    elif transfer.amount < invoice.balance:
        notification.review_reason = "partial"
    elif transfer.amount > invoice.balance:
        notification.review_reason = "excess"
    else:
        notification.status = "credited"
        notification.review_reason = None
        _credit(session, invoice, transfer.amount, "vietqr", notification=notification)
    session.flush()
    return NotificationOutcome(notification, replayed=False, invoice=invoice)


def _invoice_of(session: Session, notification: BankNotification) -> Invoice | None:
    return session.get(Invoice, notification.invoice_id) if notification.invoice_id else None


def record_desk_payment(
    session: Session,
    invoice_id: int,
    *,
    channel: str,
    amount: object,
    cashier: str,
    terminal_reference: str | None = None,
) -> Payment:
    """Record cash or a card-terminal payment taken at the desk (at most what is owed).

    Raises InvalidPayment for an unknown channel or a bad amount, InvoiceClosed when
    nothing is owed any more, and UnpricedCharges while a charge has no price.
    """
    if channel not in DESK_CHANNELS:
        raise InvalidPayment(N_("Choose cash or card."), fields={"channel": N_("Choose cash or card.")})
    value = whole_dong(amount, "amount")
    invoice = get_invoice(session, invoice_id, lock=True)
    ensure_collectable(session, invoice)
    if invoice.status == "paid" or invoice.balance <= 0:
        raise InvoiceClosed()
    if value > invoice.balance:
        message = N_("The amount is more than what is owed.")
        raise InvalidPayment(message, fields={"amount": message}, extra={"balance": str(invoice.balance)})
    reference = (terminal_reference or "").strip()[:100] or None
    return _credit(session, invoice, value, channel, recorded_by=cashier, terminal_reference=reference)


def review_queue(session: Session) -> list[BankNotification]:
    """Return the transfers waiting for a cashier, oldest first."""
    return list(
        session.scalars(
            select(BankNotification)
            .where(BankNotification.status == "review")
            .order_by(BankNotification.received_at, BankNotification.id)
        )
    )


def review_count(session: Session) -> int:
    """Return how many transfers wait for a cashier."""
    return int(
        session.scalar(
            select(func.count()).select_from(BankNotification).where(BankNotification.status == "review")
        )
        or 0
    )


def resolve_review(
    session: Session,
    notification_id: int,
    *,
    action: str,
    cashier: str,
    note: str,
    invoice_reference: str | None = None,
) -> BankNotification:
    """Settle a held transfer: credit it to an invoice, or record that it was sent back.

    ``credit`` puts the whole amount on the invoice named (or the one it matched): a
    partial transfer leaves a balance, an excess one leaves a credit to refund.

    Raises ReviewNotFound when the transfer is not waiting for review, InvalidPayment for
    an unknown action, a missing note or an invoice that cannot be found.
    """
    notification = session.get(
        BankNotification, notification_id, with_for_update=True, populate_existing=True
    )
    if notification is None or notification.status != "review":
        raise ReviewNotFound()
    text = " ".join(note.split())[:500]
    if not text:
        message = N_("Give a reason.")
        raise InvalidPayment(message, fields={"note": message})
    if action == "credit":
        invoice = (
            invoice_by_reference(session, invoice_reference.strip())
            if invoice_reference and invoice_reference.strip()
            else _invoice_of(session, notification)
        )
        if invoice is None:
            message = N_("Name the invoice to credit.")
            raise InvalidPayment(message, fields={"invoice_reference": message})
        invoice = get_invoice(session, invoice.id, lock=True)
        notification.invoice_id = invoice.id
        _credit(
            session, invoice, notification.amount, "vietqr", recorded_by=cashier, notification=notification
        )
        notification.resolution = "credited"
    elif action == "return":
        notification.resolution = "returned"
    else:
        message = N_("Choose credit or return.")
        raise InvalidPayment(message, fields={"action": message})
    notification.status = "resolved"
    notification.resolved_by = cashier
    notification.resolved_at = utcnow()
    notification.resolution_note = text
    session.flush()
    return notification


def payments_of(session: Session, invoice_id: int) -> list[Payment]:
    """Return an invoice's payments, oldest first."""
    return list(
        session.scalars(select(Payment).where(Payment.invoice_id == invoice_id).order_by(Payment.received_at))
    )


def transfer_summary(notification: BankNotification) -> dict[str, Any]:
    """Describe a notice for the API and the review page."""
    return {
        "id": notification.id,
        "transaction_id": notification.transaction_id,
        "amount": str(notification.amount.quantize(Decimal(1))),
        "description": notification.description,
        "status": notification.status,
        "review_reason": notification.review_reason,
        "invoice_id": notification.invoice_id,
    }


REFUND_CHANNELS = ("cash", "card", "transfer")


def refund(
    session: Session, invoice_id: int, *, amount: object, channel: str, reason: str, cashier: str
) -> Refund:
    """Give money back on an invoice (at most what was paid), with the cashier's reason. Never commits.

    The invoice's paid amount falls by the refund, so a refunded invoice is open again
    when it no longer covers what is due (and its charges may then be changed).

    Raises InvalidPayment for an unknown channel, a bad amount, an empty reason or more
    than was paid.
    """
    if channel not in REFUND_CHANNELS:
        message = N_("Choose cash, card or bank transfer.")
        raise InvalidPayment(message, fields={"channel": message})
    value = whole_dong(amount, "amount")
    text = " ".join(reason.split())[:500]
    if not text:
        message = N_("Give a reason.")
        raise InvalidPayment(message, fields={"reason": message})
    invoice = get_invoice(session, invoice_id, lock=True)
    if value > invoice.amount_paid:
        message = N_("A refund cannot be more than what was paid.")
        raise InvalidPayment(message, fields={"amount": message}, extra={"paid": str(invoice.amount_paid)})
    given_back = Refund(
        invoice_id=invoice.id, channel=channel, amount=value, reason=text, recorded_by=cashier
    )
    session.add(given_back)
    invoice.amount_paid = invoice.amount_paid - value
    settle(invoice)
    session.flush()
    if invoice.invoice_resource_id:
        resource = store.read(session, "Invoice", invoice.invoice_resource_id).resource
        resource["status"] = "balanced" if invoice.status == "paid" else "issued"
        store.update(session, "Invoice", invoice.invoice_resource_id, resource)
    events.publish(
        "payment.refunded",
        {
            "invoice_id": invoice.id,
            "reference": invoice.reference,
            "amount": str(value),
            "balance": str(invoice.balance),
            "status": invoice.status,
        },
    )
    return given_back


def refunds_of(session: Session, invoice_id: int) -> list[Refund]:
    """Return an invoice's refunds, oldest first."""
    return list(
        session.scalars(select(Refund).where(Refund.invoice_id == invoice_id).order_by(Refund.refunded_at))
    )
