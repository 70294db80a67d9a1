"""Turn other contexts' events into charges: the visit fee at check-in, services, dispensed drugs.

Expected payloads (the publishers own them; billing only reads these keys)::

    encounter.checked_in  {"encounter_id", "patient_id", "visit_code", "checked_in_at"}
    service.performed     {"performed_id", "encounter_id", "patient_id", "item_code",
                           "quantity" (default 1), "performed_at"}
    medication.dispensed  {"dispense_id", "encounter_id", "patient_id", "dispensed_at",
                           "items": [{"line_id", "item_code", "quantity"}]}

Times are ISO 8601 instants. Each charge's source is the event's fact
(``encounter.checked_in:<encounter_id>``, ``service.performed:<performed_id>``,
``medication.dispensed:<dispense_id>:<line_id>``), so an event delivered twice, or
handled by two processes, charges once. Events are at most once: a publisher that
must never miss a charge calls :func:`billing.charges.record_charge` in its own
transaction with the same source, and the event then changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

from billing.charges import Charge, InvalidCharge, record_charge
from his import events
from his.db import get_database
from his.errors import VetinhError

log = logging.getLogger(__name__)

TOPICS = ("encounter.checked_in", "service.performed", "medication.dispensed")


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str | int) or not str(value).strip():
        raise InvalidCharge(fields={key: "required"})
    return str(value).strip()


def _moment(data: dict[str, Any], key: str) -> datetime:
    try:
        return datetime.fromisoformat(_text(data, key).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidCharge(fields={key: "not an ISO 8601 time"}) from None


def on_checked_in(session: Session, data: dict[str, Any]) -> list[Charge]:
    """Charge the visit fee of a check-in.

    Raises InvalidCharge when a key is missing.
    """
    encounter_id = _text(data, "encounter_id")
    outcome = record_charge(
        session,
        _text(data, "patient_id"),
        encounter_id,
        _text(data, "visit_code"),
        1,
        _moment(data, "checked_in_at"),
        f"encounter.checked_in:{encounter_id}",
    )
    return [outcome.charge]


def on_service_performed(session: Session, data: dict[str, Any]) -> list[Charge]:
    """Charge a service when it was performed.

    Raises InvalidCharge when a key is missing or the quantity is bad.
    """
    performed_id = _text(data, "performed_id")
    outcome = record_charge(
        session,
        _text(data, "patient_id"),
        _text(data, "encounter_id"),
        _text(data, "item_code"),
        data.get("quantity", 1),
        _moment(data, "performed_at"),
        f"service.performed:{performed_id}",
    )
    return [outcome.charge]


def on_medication_dispensed(session: Session, data: dict[str, Any]) -> list[Charge]:
    """Charge each dispensed line.

    Raises InvalidCharge when a key is missing or a line's quantity is bad.
    """
    dispense_id = _text(data, "dispense_id")
    patient_id = _text(data, "patient_id")
    encounter_id = _text(data, "encounter_id")
    when = _moment(data, "dispensed_at")
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidCharge(fields={"items": "required"})
    charges = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidCharge(fields={f"items[{index}]": "not an object"})
        line_id = str(item.get("line_id") or index)
        outcome = record_charge(
            session,
            patient_id,
            encounter_id,
            _text(item, "item_code"),
            item.get("quantity", 1),
            when,
            f"medication.dispensed:{dispense_id}:{line_id}",
        )
        charges.append(outcome.charge)
    return charges


HANDLERS: dict[str, Callable[[Session, dict[str, Any]], list[Charge]]] = {
    "encounter.checked_in": on_checked_in,
    "service.performed": on_service_performed,
    "medication.dispensed": on_medication_dispensed,
}


def handle(app: Flask, topic: str, data: dict[str, Any]) -> list[Charge]:
    """Handle one event in its own unit of work; a bad event is logged and skipped, never retried."""
    handler = HANDLERS.get(topic)
    if handler is None:
        return []
    try:
        with app.app_context(), get_database(app).session_scope() as session:
            return handler(session, data)
    except VetinhError:
        log.warning("Billing could not charge for %s %r", topic, data, exc_info=True)
        return []


class ChargeListener:
    """Listen to the charge events in a background thread until stopped.

    Every process may run one: the charge's unique source makes a second process's
    handling of the same event a no-op.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="billing-charges", daemon=True)

    def start(self) -> ChargeListener:
        """Start listening; return once subscribed, so no later event is missed."""
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        with self.app.app_context(), events.subscribe(list(TOPICS), timeout=0.2) as subscription:
            self._ready.set()
            while not self._stop.is_set():
                event = subscription.get(0.2)
                if event is not None:
                    handle(self.app, event.topic, event.data)

    def stop(self) -> None:
        """Stop listening and wait for the event in hand to finish."""
        self._stop.set()
        self._thread.join(timeout=5)
