"""Map encounter recording and prescriptions to FHIR R4 JSON (pure: no session, no request)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from his.records.catalogue import (
    ATC_SYSTEM,
    DRUG_CLASS_SYSTEM,
    DRUG_SYSTEM,
    ICD10_SYSTEM,
    INGREDIENT_SYSTEM,
    SERVICE_SYSTEM,
    Drug,
    Icd10Entry,
    OrderableService,
)
from his.records.dosing import Dosage
from his.records.safety import ISSUE_CODES, SafetyWarning

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PRESCRIPTION_CODE_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/prescription_code"
USER_SYSTEM = "urn:vetinh:user"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SIGNATURE_TYPE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}

# (field, LOINC code, display, UCUM unit, plausible low, plausible high)
VITALS: tuple[tuple[str, str, str, str, Decimal, Decimal], ...] = (
    ("pulse", "8867-4", "Heart rate", "/min", Decimal(20), Decimal(250)),
    ("temperature", "8310-5", "Body temperature", "Cel", Decimal(30), Decimal(45)),
    ("respiratory_rate", "9279-1", "Respiratory rate", "/min", Decimal(4), Decimal(80)),
    (
        "spo2",
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        Decimal(50),
        Decimal(100),
    ),
    ("weight", "29463-7", "Body weight", "kg", Decimal("0.3"), Decimal(300)),
    ("height", "8302-2", "Body height", "cm", Decimal(20), Decimal(250)),
    ("bmi", "39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", Decimal(5), Decimal(100)),
)
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC = ("8480-6", "Systolic blood pressure", Decimal(40), Decimal(300))
DIASTOLIC = ("8462-4", "Diastolic blood pressure", Decimal(20), Decimal(200))
ORDER_CATEGORIES = {
    "lab": {"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"},
    "imaging": {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"},
    "pathology": {"system": "http://snomed.info/sct", "code": "394595002", "display": "Pathology"},
}
NOTE_SECTIONS = {
    "chief_complaint": ("10154-3", "Chief complaint Narrative - Reported"),
    "history": ("10164-2", "History of Present illness Narrative"),
    "examination": ("29545-1", "Physical findings Narrative"),
    "plan": ("18776-5", "Plan of care note"),
}


def _ref(reference: str, display: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"reference": reference}
    if display:
        found["display"] = display
    return found


def quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def vital_observation(
    name: str, value: Decimal, patient_id: str, encounter_id: str, when: str, performer: str | None
) -> dict[str, Any]:
    """Return one vital-sign Observation coded in LOINC with a UCUM quantity."""
    _field, code, display, unit, _low, _high = next(v for v in VITALS if v[0] == name)
    resource = _observation(code, display, patient_id, encounter_id, when, performer)
    resource["valueQuantity"] = quantity(value, unit)
    return resource


def blood_pressure(
    systolic: Decimal,
    diastolic: Decimal,
    patient_id: str,
    encounter_id: str,
    when: str,
    performer: str | None,
) -> dict[str, Any]:
    """Return the blood-pressure panel with systolic and diastolic components."""
    resource = _observation(*BP_PANEL, patient_id, encounter_id, when, performer)
    resource["component"] = [
        {"code": _loinc(SYSTOLIC[0], SYSTOLIC[1]), "valueQuantity": quantity(systolic, "mm[Hg]")},
        {"code": _loinc(DIASTOLIC[0], DIASTOLIC[1]), "valueQuantity": quantity(diastolic, "mm[Hg]")},
    ]
    return resource


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _observation(
    code: str, display: str, patient_id: str, encounter_id: str, when: str, performer: str | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": _loinc(code, display),
        "subject": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "effectiveDateTime": when,
    }
    if performer:
        resource["performer"] = [_ref(performer)]
    return resource


def condition(
    entry: Icd10Entry,
    patient_id: str,
    encounter_id: str,
    when: str,
    asserter: str | None,
    primary: bool,
    note: str,
) -> dict[str, Any]:
    """Return an encounter diagnosis coded in ICD-10 with its Vietnamese title."""
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": ICD10_SYSTEM, "code": entry.code, "display": entry.vi}],
            "text": entry.vi,
        },
        "subject": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "recordedDate": when,
    }
    if primary:
        resource["extension"] = [{"url": "urn:vetinh:primary-diagnosis", "valueBoolean": True}]
    if asserter:
        resource["asserter"] = _ref(asserter)
    if note:
        resource["note"] = [{"text": note}]
    return resource


def allergy(
    key: str, label: str, patient_id: str, encounter_id: str, when: str, recorder: str | None, reaction: str
) -> dict[str, Any]:
    """Return an AllergyIntolerance to an ingredient or a drug class (``class:<name>``)."""
    is_class = key.startswith("class:")
    system = DRUG_CLASS_SYSTEM if is_class else INGREDIENT_SYSTEM
    resource: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "confirmed",
                }
            ]
        },
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {
            "coding": [{"system": system, "code": key.removeprefix("class:"), "display": label}],
            "text": label,
        },
        "patient": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "recordedDate": when,
    }
    if recorder:
        resource["recorder"] = _ref(recorder)
    if reaction:
        resource["reaction"] = [{"manifestation": [{"text": reaction}]}]
    return resource


def allergy_key(resource: dict[str, Any]) -> tuple[str, str] | None:
    """Return (substance key, label) of a stored AllergyIntolerance, or None if not ours."""
    code = resource.get("code") or {}
    label = code.get("text") or ""
    for coding in code.get("coding", []):
        if coding.get("system") == INGREDIENT_SYSTEM:
            return str(coding.get("code", "")).lower(), label or coding.get("display", "")
        if coding.get("system") == DRUG_CLASS_SYSTEM:
            return f"class:{str(coding.get('code', '')).lower()}", label or coding.get("display", "")
    return None


def service_request(
    category: str,
    text: str,
    patient_id: str,
    encounter_id: str,
    when: str,
    requester: str | None,
    *,
    service: OrderableService | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Return an order for lab, imaging or pathology: a catalogue service (coded) or free text."""
    code: dict[str, Any] = {"text": text}
    if service is not None:
        category = service.category
        code = {
            "coding": [{"system": SERVICE_SYSTEM, "code": service.code, "display": service.vi}],
            "text": service.vi,
        }
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [ORDER_CATEGORIES[category]]}],
        "code": code,
        "subject": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "authoredOn": when,
    }
    if requester:
        resource["requester"] = _ref(requester)
    if note:
        resource["note"] = [{"text": note}]
    return resource


def service_code(resource: dict[str, Any]) -> str | None:
    """Return the catalogue code of an order or procedure, or None for a free-text one."""
    for coding in resource.get("code", {}).get("coding", []):
        if coding.get("system") == SERVICE_SYSTEM and coding.get("code"):
            return str(coding["code"])
    return None


def performed_procedure(order: dict[str, Any], when: str, performer: str) -> dict[str, Any]:
    """Return the Procedure recording that an order was carried out (``basedOn`` the order)."""
    return {
        "resourceType": "Procedure",
        "status": "completed",
        "basedOn": [_ref(f"ServiceRequest/{order['id']}")],
        **({"category": order["category"][0]} if order.get("category") else {}),
        "code": order.get("code", {}),
        "subject": order["subject"],
        "encounter": order["encounter"],
        "performedDateTime": when,
        "performer": [{"actor": _ref(performer)}],
    }


def clinical_note(
    sections: dict[str, str], patient_id: str, encounter_id: str, when: str, author: str, title: str
) -> dict[str, Any]:
    """Return the encounter's note as a Composition (chief complaint, history, examination, plan)."""
    return {
        "resourceType": "Composition",
        "status": "preliminary",
        "type": _loinc("34108-1", "Outpatient Note"),
        "subject": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "date": when,
        "author": [_ref(author)],
        "title": title,
        "section": [
            {
                "title": NOTE_SECTIONS[name][1],
                "code": _loinc(*NOTE_SECTIONS[name]),
                "text": {"status": "generated", "div": _div(text)},
            }
            for name, text in sections.items()
            if text.strip()
        ],
    }


def _div(text: str) -> str:
    from markupsafe import escape

    return f'<div xmlns="http://www.w3.org/1999/xhtml">{escape(text.strip())}</div>'


def note_text(section: dict[str, Any]) -> str:
    """Return the plain text of a note section written by ``clinical_note``."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", section.get("text", {}).get("div", "")))


def drug_concept(drug: Drug) -> dict[str, Any]:
    coding = [{"system": DRUG_SYSTEM, "code": drug.code, "display": drug.name}]
    if drug.atc:
        coding.append({"system": ATC_SYSTEM, "code": drug.atc})
    return {"coding": coding, "text": drug.name}


@dataclass(frozen=True)
class RequestLine:
    """What a MedicationRequest needs from a planned prescription line."""

    line: int
    drug: Drug
    dosage: Dosage
    quantity: Decimal
    note: str


def medication_request(
    item: RequestLine,
    code: str,
    days: int,
    patient_id: str,
    encounter_id: str,
    when: str,
    requester: str,
    valid_until: date,
) -> dict[str, Any]:
    """Return one line of a prescription as a MedicationRequest grouped by the prescription code."""
    dose: dict[str, Any] = {"value": item.dosage.largest_dose, "unit": item.drug.dose_unit}
    return {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": PRESCRIPTION_CODE_SYSTEM, "value": f"{code}#{item.line}"}],
        "groupIdentifier": {"system": PRESCRIPTION_CODE_SYSTEM, "value": code},
        "status": "draft",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                        "code": "outpatient",
                    }
                ]
            }
        ],
        "medicationCodeableConcept": drug_concept(item.drug),
        "subject": _ref(f"Patient/{patient_id}"),
        "encounter": _ref(f"Encounter/{encounter_id}"),
        "authoredOn": when,
        "requester": _ref(requester),
        "dosageInstruction": [
            {
                "text": item.dosage.text,
                "timing": {
                    "repeat": {"frequency": item.dosage.times_per_day, "period": 1, "periodUnit": "d"}
                },
                "route": {"text": item.drug.route},
                "doseAndRate": [{"doseQuantity": dose}],
                **({"patientInstruction": item.note} if item.note else {}),
            }
        ],
        "dispenseRequest": {
            "validityPeriod": {"start": when[:10], "end": valid_until.isoformat()},
            "quantity": {"value": item.quantity, "unit": item.drug.unit},
            "expectedSupplyDuration": {
                "value": days,
                "unit": "days",
                "system": UCUM,
                "code": "d",
            },
        },
    }


def detected_issue(
    warning: SafetyWarning,
    rendered: str,
    reason: str,
    patient_id: str,
    implicated: list[str],
    when: str,
    author: str,
) -> dict[str, Any]:
    """Return a safety warning and the prescriber's override reason as a DetectedIssue."""
    _system, code, display = ISSUE_CODES[warning.kind]
    return {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": "urn:vetinh:safety-warning", "value": warning.key}],
        "status": "final",
        "code": {"coding": [{"system": ACT_CODE, "code": code, "display": display}]},
        "severity": "high" if warning.severity in ("contraindicated", "major", "high") else "moderate",
        "patient": _ref(f"Patient/{patient_id}"),
        "identifiedDateTime": when,
        "author": _ref(author),
        "implicated": [_ref(r) for r in implicated],
        "detail": rendered + (f" — {warning.advice}" if warning.advice else ""),
        "mitigation": [{"action": {"text": reason}, "date": when, "author": _ref(author)}],
    }


def practitioner(username: str, full_name: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": USER_SYSTEM, "value": username}],
        "active": True,
        "name": [{"text": full_name}],
    }


def provenance(
    targets: list[str],
    when: str,
    who: str,
    jws: str,
    *,
    activity: str = "sign",
    revises: list[str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Return the Provenance that carries a signature over exact versions of resources."""
    import base64

    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [_ref(t) for t in targets],
        "recorded": when,
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "UPDATE" if revises else "CREATE",
                }
            ],
            "text": activity,
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": _ref(who),
            }
        ],
        "signature": [
            {
                "type": [SIGNATURE_TYPE],
                "when": when,
                "who": _ref(who),
                "targetFormat": "application/fhir+json",
                "sigFormat": "application/jose",
                "data": base64.b64encode(jws.encode("ascii")).decode("ascii"),
            }
        ],
    }
    if revises:
        resource["entity"] = [{"role": "revision", "what": _ref(r)} for r in revises]
    if reason:
        resource["reason"] = [{"text": reason}]
    return resource


def moment(value: datetime) -> str:
    """Format an aware time as a FHIR dateTime with seconds."""
    return value.isoformat(timespec="seconds")
