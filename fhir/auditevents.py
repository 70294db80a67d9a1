"""Publish the platform's audit records as FHIR AuditEvent resources.

The ``fhir.audit_events`` job copies every audit record written since its last run
into the store as ``AuditEvent/audit-<record id>`` (zero-padded, so the newest copy
is also the greatest id). It can run twice without harm: a record already copied is
never copied again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir import services
from fhir.models import FhirResource

PREFIX = "audit-"
BATCH = 1000
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "search": "E",
    "history": "R",
    "everything": "R",
    "update": "U",
    "delete": "D",
    "transaction": "E",
    "validate": "E",
    "export": "E",
}
OUTCOMES = {"success": "0", "failure": "4", "denied": "4", "error": "8"}


def audit_event_id(record_id: int) -> str:
    """Return the AuditEvent id of an audit record."""
    return f"{PREFIX}{record_id:012d}"


def audit_event(record: Any, site_code: str | None = None) -> dict[str, Any]:
    """Map one ``his.models.AuditRecord`` to an AuditEvent resource (pure)."""
    recorded: datetime = record.recorded_at
    if recorded.tzinfo is None:
        recorded = recorded.replace(tzinfo=UTC)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": audit_event_id(record.id),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": record.action}],
        "action": ACTIONS.get(record.action, "E"),
        "recorded": services.instant(recorded),
        "outcome": OUTCOMES.get(record.outcome, "4"),
    }
    if record.detail:
        event["outcomeDesc"] = record.detail[:1000]
    agent: dict[str, Any] = {"requestor": True}
    if record.username:
        agent["who"] = {
            "identifier": {"system": "urn:vetinh:user", "value": record.username},
            "display": record.username,
        }
    if record.role:
        agent["role"] = [{"text": record.role}]
    if record.address:
        agent["network"] = {"address": record.address, "type": "2"}
    event["agent"] = [agent]
    event["source"] = {"observer": {"display": "Vệ Tinh"}}
    if site_code:
        event["source"]["site"] = site_code
    entities: list[dict[str, Any]] = []
    if record.patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{record.patient_id}"},
                "role": {
                    "code": "1",
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "display": "Patient",
                },
            }
        )
    if (
        record.entity_id
        and record.entity_type
        and record.entity_type[:1].isupper()
        and record.entity_type != "Patient"
    ):
        entities.append({"what": {"reference": f"{record.entity_type}/{record.entity_id}"}})
    elif record.entity_type:
        entities.append({"what": {"display": f"{record.entity_type}/{record.entity_id or ''}".rstrip("/")}})
    if record.path:
        entities.append({"description": f"{record.method or ''} {record.path}".strip()[:1000]})
    event["entity"] = entities
    return event


def copy_new_records(session: Session, site_code: str | None = None) -> int:
    """Copy audit records not yet in the store; return how many were copied."""
    from his.models import AuditRecord

    last = session.scalar(
        select(FhirResource.res_id)
        .where(FhirResource.res_type == "AuditEvent", FhirResource.res_id.like(f"{PREFIX}%"))
        .order_by(FhirResource.res_id.desc())
        .limit(1)
    )
    after = int(last[len(PREFIX) :]) if last else 0
    records = session.scalars(
        select(AuditRecord).where(AuditRecord.id > after).order_by(AuditRecord.id).limit(BATCH)
    ).all()
    if not records:
        return 0
    moment = services._now()
    writes = []
    for record in records:
        event = audit_event(record, site_code)
        text = services._stamp(None, event, event["id"], 1, moment)
        writes.append(
            services._Write("AuditEvent", event["id"], 1, "POST", moment, moment, True, event, text)
        )
    services._apply(session, writes)
    return len(writes)


def run(app: Any) -> int:
    """Copy new audit records (the ``fhir.audit_events`` job)."""
    from his.db import begin_immediate, get_session

    settings = app.extensions["vetinh.settings"]
    session = get_session()
    # Read-then-write: on SQLite take the write lock first, or a write committed by a
    # request in between makes the upgrade fail with "database is locked".
    begin_immediate(session)
    total = 0
    while True:
        copied = copy_new_records(session, settings.site_code)
        total += copied
        if copied < BATCH:
            return total
