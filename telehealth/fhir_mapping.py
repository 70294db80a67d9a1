"""Map telehealth facts to FHIR R4 resources: pure functions, no session, no request."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from fhir.services import instant

CATEGORY_SYSTEM = "http://vetinh.vn/fhir/CodeSystem/service-request-category"
TELECONSULTATION = "teleconsultation"
FACILITY_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/facility"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"


def organization_reference(
    code: str, name: str, facility_code: str | None, organization_id: str | None
) -> dict[str, Any]:
    """Refer to a site: by its Organization when it has one, else by its facility code."""
    if organization_id:
        return {"reference": f"Organization/{organization_id}", "display": name}
    return {"identifier": {"system": FACILITY_SYSTEM, "value": facility_code or code}, "display": name}


def consult_request(
    *,
    patient_id: str,
    requester_name: str,
    requester_site: dict[str, Any],
    performer_site: dict[str, Any],
    reason: str,
    summary: str,
    attachments: list[str],
    authored: datetime,
) -> dict[str, Any]:
    """Build the ServiceRequest (category teleconsultation) a district doctor sends to the central site."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": TELECONSULTATION, "display": "Teleconsultation"}]}
        ],
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "11429006", "display": "Consultation"}],
            "text": "Hội chẩn từ xa",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": instant(authored),
        "requester": {**requester_site, "display": f"{requester_name} ({requester_site.get('display', '')})"},
        "performer": [performer_site],
        "reasonCode": [{"text": reason}],
        "note": [{"text": summary}],
    }
    if attachments:
        resource["supportingInfo"] = [{"reference": f"DocumentReference/{doc}"} for doc in attachments]
    return resource


def virtual_encounter(
    *,
    patient_id: str | None,
    appointment_id: str | None,
    service_request_id: str | None,
    service_provider: dict[str, Any],
    started: datetime,
) -> dict[str, Any]:
    """Build the in-progress Encounter (class virtual) a call opens."""
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": ACT_CODE_SYSTEM, "code": "VR", "display": "virtual"},
        "period": {"start": instant(started)},
        "serviceProvider": service_provider,
    }
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if appointment_id:
        resource["appointment"] = [{"reference": f"Appointment/{appointment_id}"}]
    if service_request_id:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{service_request_id}"}]
    return resource


def finished_encounter(encounter: dict[str, Any], ended: datetime) -> dict[str, Any]:
    """Return the Encounter marked finished at ``ended``."""
    finished = dict(encounter)
    finished["status"] = "finished"
    finished["period"] = {**dict(encounter.get("period") or {}), "end": instant(ended)}
    return finished


def consult_note(
    *,
    patient_id: str | None,
    encounter_id: str | None,
    author_name: str,
    title: str,
    text: str,
    written: datetime,
) -> dict[str, Any]:
    """Build the consult note (Composition, LOINC 11488-4) a specialist writes after the call."""
    resource: dict[str, Any] = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "11488-4", "display": "Consult note"}]},
        "date": instant(written),
        "author": [{"display": author_name}],
        "title": title,
        "section": [
            {
                "title": title,
                "text": {"status": "generated", "div": _xhtml(text)},
            }
        ],
    }
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return resource


def shared_file(
    *,
    patient_id: str | None,
    encounter_id: str | None,
    author_name: str,
    filename: str,
    content_type: str,
    data: bytes,
    created: datetime,
) -> dict[str, Any]:
    """Build the DocumentReference that keeps a file shared during a call."""
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "date": instant(created),
        "author": [{"display": author_name}],
        "description": filename,
        "content": [
            {
                "attachment": {
                    "contentType": content_type,
                    "title": filename,
                    "size": len(data),
                    "data": base64.b64encode(data).decode("ascii"),
                }
            }
        ],
    }
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if encounter_id:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{encounter_id}"}]}
    return resource


def recording_document(
    *,
    patient_id: str | None,
    encounter_id: str | None,
    participant_name: str,
    url: str,
    size: int,
    sha1: bytes,
    started: datetime,
    ended: datetime,
) -> dict[str, Any]:
    """Build the DocumentReference of one participant's recording of a call (the file stays in file storage)."""
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"text": "Video consultation recording"},
        "date": instant(ended),
        "description": f"Ghi hình cuộc gọi: {participant_name}",
        "content": [
            {
                "attachment": {
                    "contentType": "video/x-matroska",
                    "url": url,
                    "size": size,
                    "hash": base64.b64encode(sha1).decode("ascii"),
                    "title": f"{participant_name}.mkv",
                    "creation": instant(started),
                }
            }
        ],
    }
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if encounter_id:
        resource["context"] = {
            "encounter": [{"reference": f"Encounter/{encounter_id}"}],
            "period": {"start": instant(started), "end": instant(ended)},
        }
    return resource


def _xhtml(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paragraphs = "".join(f"<p>{line}</p>" for line in escaped.splitlines() if line.strip()) or "<p></p>"
    return f'<div xmlns="http://www.w3.org/1999/xhtml">{paragraphs}</div>'
