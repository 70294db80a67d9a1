"""Map the booking context's rows to FHIR R4 resources: pure functions, no session, no request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

QUEUE_NUMBER_SYSTEM = "urn:vetinh:booking:queue-number"
BOOKING_SYSTEM = "urn:vetinh:booking:booking"
CLINIC_SYSTEM = "urn:vetinh:booking:clinic"
DEPARTMENT_SYSTEM = "urn:vetinh:booking:department"
SESSION_SYSTEM = "urn:vetinh:booking:session"
ENCOUNTER_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PART_LABELS = {"morning": "Sáng", "afternoon": "Chiều"}
# A video visit's Appointment says so in its appointmentType (v3 ActCode VR: virtual).
VIRTUAL_CODING = {"system": ENCOUNTER_CLASS_SYSTEM, "code": "VR", "display": "virtual"}


def instant(moment: datetime) -> str:
    """Write a moment as a FHIR instant in UTC."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _organization(organization_id: str | None) -> dict[str, Any]:
    return {"providedBy": {"reference": f"Organization/{organization_id}"}} if organization_id else {}


def healthcare_service(
    *, code: str, name: str, site_code: str, organization_id: str | None
) -> dict[str, Any]:
    """Describe a department as a HealthcareService."""
    return {
        "resourceType": "HealthcareService",
        "active": True,
        "identifier": [{"system": DEPARTMENT_SYSTEM, "value": f"{site_code}/{code}"}],
        "name": name,
        **_organization(organization_id),
    }


def location(
    *,
    code: str,
    name: str,
    room: str,
    site_code: str,
    organization_id: str | None,
) -> dict[str, Any]:
    """Describe a clinic (consulting room) as a Location."""
    resource: dict[str, Any] = {
        "resourceType": "Location",
        "status": "active",
        "identifier": [{"system": CLINIC_SYSTEM, "value": f"{site_code}/{code}"}],
        "name": name,
        "alias": [room],
        "mode": "instance",
        "physicalType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "ro",
                    "display": "Room",
                }
            ]
        },
    }
    if organization_id:
        resource["managingOrganization"] = {"reference": f"Organization/{organization_id}"}
    return resource


def schedule(
    *,
    session_id: int,
    location_id: str | None,
    healthcare_service_id: str | None,
    clinic_name: str,
    doctor_name: str | None,
    starts_at: datetime,
    ends_at: datetime,
    part: str,
) -> dict[str, Any]:
    """Describe a clinic session as a Schedule (the clinic and the doctor are its actors)."""
    actors: list[dict[str, Any]] = []
    if location_id:
        actors.append({"reference": f"Location/{location_id}", "display": clinic_name})
    if healthcare_service_id:
        actors.append({"reference": f"HealthcareService/{healthcare_service_id}"})
    if doctor_name:
        actors.append({"display": doctor_name})
    if not actors:
        actors.append({"display": clinic_name})
    return {
        "resourceType": "Schedule",
        "active": True,
        "identifier": [{"system": SESSION_SYSTEM, "value": str(session_id)}],
        "actor": actors,
        "planningHorizon": {"start": instant(starts_at), "end": instant(ends_at)},
        "comment": f"{clinic_name} · {PART_LABELS.get(part, part)}",
    }


def slot(*, schedule_id: str, starts_at: datetime, ends_at: datetime, full: bool) -> dict[str, Any]:
    """Describe the session's bookable time as one Slot, busy once the online numbers are gone."""
    return {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": "busy" if full else "free",
        "start": instant(starts_at),
        "end": instant(ends_at),
    }


def appointment(
    *,
    booking_id: int,
    queue_number: int,
    status: str,
    patient_id: str,
    slot_id: str | None,
    location_id: str | None,
    clinic_name: str,
    estimated_call_at: datetime,
    minutes_per_patient: int,
    created_at: datetime,
    channel: str,
    video: bool = False,
) -> dict[str, Any]:
    """Describe a booking as an Appointment whose identifier is the queue number.

    A booking in a video session carries the ``VR`` (virtual) code in its appointmentType.
    """
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"Patient/{patient_id}"}, "required": "required", "status": "accepted"}
    ]
    if location_id:
        participants.append(
            {
                "actor": {"reference": f"Location/{location_id}", "display": clinic_name},
                "required": "required",
                "status": "accepted",
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [
            {
                "system": QUEUE_NUMBER_SYSTEM,
                "value": str(queue_number),
                "type": {"text": "Số thứ tự"},
            },
            {"system": BOOKING_SYSTEM, "value": str(booking_id)},
        ],
        "status": status,
        "appointmentType": {
            **({"coding": [dict(VIRTUAL_CODING)]} if video else {}),
            "text": "walk-in" if channel == "walkin" else "online",
        },
        "description": f"{clinic_name} · số {queue_number}",
        "start": instant(estimated_call_at),
        "minutesDuration": max(1, minutes_per_patient),
        "created": instant(created_at)[:10],
        "participant": participants,
    }
    if slot_id:
        resource["slot"] = [{"reference": f"Slot/{slot_id}"}]
    return resource


def encounter(
    *,
    status: str,
    patient_id: str,
    appointment_id: str | None,
    location_id: str | None,
    organization_id: str | None,
    arrived_at: datetime,
    ended_at: datetime | None = None,
) -> dict[str, Any]:
    """Describe a checked-in visit as an ambulatory Encounter."""
    period: dict[str, Any] = {"start": instant(arrived_at)}
    if ended_at is not None:
        period["end"] = instant(ended_at)
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": ENCOUNTER_CLASS_SYSTEM, "code": "AMB", "display": "ambulatory"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": period,
    }
    if appointment_id:
        resource["appointment"] = [{"reference": f"Appointment/{appointment_id}"}]
    if location_id:
        resource["location"] = [{"location": {"reference": f"Location/{location_id}"}}]
    if organization_id:
        resource["serviceProvider"] = {"reference": f"Organization/{organization_id}"}
    return resource


SATISFACTION_QUESTIONNAIRE_URL = "urn:vetinh:booking:questionnaire:satisfaction"


def satisfaction_questionnaire() -> dict[str, Any]:
    """Describe the short after-visit survey (in Vietnamese) as a Questionnaire."""
    return {
        "resourceType": "Questionnaire",
        "url": SATISFACTION_QUESTIONNAIRE_URL,
        "version": "1",
        "name": "KhaoSatHaiLong",
        "title": "Khảo sát mức độ hài lòng sau khám",
        "status": "active",
        "language": "vi",
        "subjectType": ["Patient"],
        "item": [
            {
                "linkId": "overall",
                "text": "Anh/chị hài lòng với lần khám này ở mức nào (1 = rất không hài lòng, 5 = rất hài lòng)?",
                "type": "integer",
                "required": True,
            },
            {"linkId": "waiting", "text": "Thời gian chờ có hợp lý không?", "type": "boolean"},
            {"linkId": "comment", "text": "Góp ý của anh/chị", "type": "text"},
        ],
    }


def satisfaction_response(
    *,
    patient_id: str,
    encounter_id: str | None,
    authored: datetime,
    overall: int,
    waiting_ok: bool | None,
    comment: str,
) -> dict[str, Any]:
    """Describe a patient's survey answers as a QuestionnaireResponse."""
    items: list[dict[str, Any]] = [{"linkId": "overall", "answer": [{"valueInteger": overall}]}]
    if waiting_ok is not None:
        items.append({"linkId": "waiting", "answer": [{"valueBoolean": waiting_ok}]})
    if comment:
        items.append({"linkId": "comment", "answer": [{"valueString": comment}]})
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{SATISFACTION_QUESTIONNAIRE_URL}|1",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": instant(authored),
        "item": items,
        "source": {"reference": f"Patient/{patient_id}"},
    }
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return resource
