"""Queue messages to patients in the outbox and deliver them: e-mail by SMTP, SMS/Zalo by a webhook.

A message is queued once per (kind, booking, channel): the outbox's ``dedupe_key`` is
unique, so a reminder job that runs twice queues nothing twice, and a message marked
sent is never sent again. Each delivery is tried on its own: one refused address or
failing webhook call is recorded on that message and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from booking.models import Notification
from his.db import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Channels:
    """Where messages go: the SMTP server, the sender address, and the SMS/Zalo webhook."""

    smtp_host: str = ""
    smtp_port: int = 25
    sender: str = "no-reply@vetinh.local"
    webhook_url: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class Contact:
    """How a patient can be reached."""

    email: str | None
    phone: str | None


def patient_contact(session: Session, patient_id: str) -> Contact:
    """Read a patient's e-mail and mobile number from their FHIR Patient (None when unknown)."""
    from fhir import services as store
    from his.errors import VetinhError

    try:
        resource = store.read(session, "Patient", patient_id).resource
    except VetinhError:
        return Contact(None, None)
    telecom = resource.get("telecom") or []
    email = next((t.get("value") for t in telecom if t.get("system") == "email" and t.get("value")), None)
    phone = next(
        (t.get("value") for t in telecom if t.get("system") in ("phone", "sms") and t.get("value")), None
    )
    return Contact(email, phone)


def enqueue(
    session: Session,
    *,
    dedupe_key: str,
    booking_id: int | None,
    kind: str,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    payload: dict[str, Any] | None = None,
) -> Notification | None:
    """Queue one message unless one with the same key was queued before; return it, or None if it was."""
    if session.scalar(select(Notification.id).where(Notification.dedupe_key == dedupe_key)) is not None:
        return None
    notification = Notification(
        dedupe_key=dedupe_key,
        booking_id=booking_id,
        kind=kind,
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        payload=payload or {},
        status="pending",
        attempts=0,
    )
    try:
        with session.begin_nested():
            session.add(notification)
            session.flush()
    except IntegrityError:
        return None  # another runner queued it in between
    return notification


def deliver_pending(session: Session, channels: Channels, *, limit: int = 500) -> dict[str, int]:
    """Send the pending messages; record sent, failed (with the error) or logged for each.

    Without an SMTP host (or webhook URL) a message is only written to the log, as the
    embedded default does. Never raises for one message's failure.
    """
    pending = session.scalars(
        select(Notification).where(Notification.status == "pending").order_by(Notification.id).limit(limit)
    ).all()
    counts = {"sent": 0, "failed": 0, "logged": 0, "retry": 0}
    smtp: smtplib.SMTP | None = None
    try:
        for message in pending:
            message.attempts += 1
            try:
                if message.channel == "email":
                    if not channels.smtp_host:
                        _log_only(message)
                        counts["logged"] += 1
                        continue
                    if smtp is None:
                        smtp = smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=channels.timeout)
                    _send_email(smtp, channels.sender, message)
                else:
                    if not channels.webhook_url:
                        _log_only(message)
                        counts["logged"] += 1
                        continue
                    _send_webhook(channels, message)
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
                _fail(message, exc, final=True)
                counts["failed"] += 1
            except (smtplib.SMTPException, OSError, requests.RequestException, WebhookRefused) as exc:
                final = message.attempts >= MAX_ATTEMPTS or (isinstance(exc, WebhookRefused) and exc.final)
                _fail(message, exc, final=final)
                counts["failed" if final else "retry"] += 1
                if isinstance(exc, smtplib.SMTPServerDisconnected | OSError) and smtp is not None:
                    smtp = None
            else:
                message.status = "sent"
                message.sent_at = utcnow()
                message.last_error = None
                counts["sent"] += 1
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                log.warning("Could not close the SMTP connection cleanly", exc_info=True)
    session.flush()
    return counts


class WebhookRefused(Exception):
    """The webhook answered with an error status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"webhook answered {status}: {text[:200]}")
        # A 4xx names a bad recipient or payload, so retrying would not help.
        self.final = 400 <= status < 500


def _send_email(smtp: smtplib.SMTP, sender: str, message: Notification) -> None:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Message-ID"] = f"<{message.dedupe_key.replace(':', '.')}@vetinh>"
    email.set_content(message.body)
    smtp.send_message(email)


def _send_webhook(channels: Channels, message: Notification) -> None:
    body: dict[str, Any] = {
        "id": message.dedupe_key,
        "to": message.recipient,
        "text": message.body,
        "kind": message.kind,
        **message.payload,
    }
    response = requests.post(
        channels.webhook_url,
        json=body,
        headers={"Idempotency-Key": message.dedupe_key},
        timeout=channels.timeout,
    )
    if response.status_code >= 300:
        raise WebhookRefused(response.status_code, response.text)


def _log_only(message: Notification) -> None:
    log.info(
        "Notification %s to %s (%s): %s",
        message.dedupe_key,
        message.recipient,
        message.channel,
        message.subject,
    )
    message.status = "logged"
    message.sent_at = utcnow()


def _fail(message: Notification, exc: BaseException, *, final: bool) -> None:
    log.warning("Notification %s to %s failed: %s", message.dedupe_key, message.recipient, exc)
    message.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    if final:
        message.status = "failed"
