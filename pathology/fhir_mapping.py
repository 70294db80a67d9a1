"""Map a stored slide to the FHIR ImagingStudy (modality SM) that records it in the patient's record."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from his.db import as_utc
from pathology.models import Slide

DICOM_CODES = "http://dicom.nema.org/resources/ontology/DCM"
SLIDE_IDENTIFIER_SYSTEM = "urn:vetinh:pathology:slide"
WSI_SOP_CLASS_URN = "urn:oid:1.2.840.10008.5.1.4.1.1.77.1.6"


def _uid(slide_id: str, part: str) -> str:
    """Derive a stable DICOM UID (2.25 form) for the slide's series or instance."""
    return "2.25." + str(uuid.uuid5(uuid.UUID(slide_id), part).int)


def imaging_study(slide: Slide, patient_id: str) -> dict[str, Any]:
    """Return the ImagingStudy JSON of one slide of a patient."""
    modality = {"system": DICOM_CODES, "code": "SM", "display": "Slide Microscopy"}
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": SLIDE_IDENTIFIER_SYSTEM, "value": slide.id}],
        "status": "available",
        "modality": [modality],
        "subject": {"reference": f"Patient/{patient_id}"},
        "numberOfSeries": 1,
        "numberOfInstances": 1,
        "description": slide.original_filename,
        "series": [
            {
                "uid": _uid(slide.id, "series"),
                "number": 1,
                "modality": modality,
                "numberOfInstances": 1,
                "instance": [
                    {
                        "uid": _uid(slide.id, "instance"),
                        "sopClass": {"system": "urn:ietf:rfc:3986", "code": WSI_SOP_CLASS_URN},
                        "number": 1,
                        "title": slide.original_filename,
                    }
                ],
            }
        ],
    }
    if slide.scanned_at is not None:
        # SQLite hands stored times back naive; FHIR needs the zone.
        resource["started"] = as_utc(slide.scanned_at).isoformat()
    if slide.case_id:
        resource["note"] = [{"text": f"Case {slide.case_id}"}]
    return resource


SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SITE_IDENTIFIER_SYSTEM = "urn:vetinh:site"
CASE_IDENTIFIER_SYSTEM = "urn:vetinh:pathology:case"
USER_IDENTIFIER_SYSTEM = "urn:vetinh:user"
SIGNATURE_TYPE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}


def site_reference(code: str, name: str, organization_id: str | None) -> dict[str, Any]:
    """Refer to a site: its Organization when the directory has one, its code otherwise."""
    if organization_id:
        return {"reference": f"Organization/{organization_id}", "display": name}
    return {"identifier": {"system": SITE_IDENTIFIER_SYSTEM, "value": code}, "display": name}


def specimen(patient_id: str, specimen_type: str, body_site: str | None, case_id: str) -> dict[str, Any]:
    """Return the Specimen JSON of a consult's material."""
    resource: dict[str, Any] = {
        "resourceType": "Specimen",
        "identifier": [{"system": CASE_IDENTIFIER_SYSTEM, "value": case_id}],
        "status": "available",
        "type": {"text": specimen_type},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if body_site:
        resource["collection"] = {"bodySite": {"text": body_site}}
    return resource


def consult_request(
    *,
    case_id: str,
    patient_id: str,
    question: str,
    specimen_id: str,
    requester: dict[str, Any],
    receiving_site: dict[str, Any],
    authored_on: str,
    imaging_study_ids: list[str],
) -> dict[str, Any]:
    """Return the ServiceRequest by which a district site asks the central site for a pathology consult."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": CASE_IDENTIFIER_SYSTEM, "value": case_id}],
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}]}
        ],
        "code": {
            "coding": [
                {
                    "system": SNOMED,
                    "code": "726007",
                    "display": "Pathology consultation, comprehensive, records and specimen with report",
                }
            ],
            "text": "Pathology consultation (whole-slide images)",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": authored_on,
        "requester": requester,
        "performer": [receiving_site],
        "specimen": [{"reference": f"Specimen/{specimen_id}"}],
        "note": [{"text": question}],
    }
    if imaging_study_ids:
        resource["supportingInfo"] = [{"reference": f"ImagingStudy/{study}"} for study in imaging_study_ids]
    return resource


def diagnostic_report(
    *,
    case_id: str,
    patient_id: str,
    service_request_id: str | None,
    specimen_id: str | None,
    imaging_study_ids: list[str],
    macroscopic: str,
    microscopic: str,
    conclusion: str,
    diagnosis_code: str | None,
    diagnosis_display: str | None,
    performer: dict[str, Any],
    interpreter: dict[str, Any],
    issued: str,
) -> dict[str, Any]:
    """Return the final DiagnosticReport of a consult, its descriptions as contained Observations."""

    def narrative(local_id: str, code: str, display: str, text: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": local_id,
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "valueString": text,
        }

    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": CASE_IDENTIFIER_SYSTEM, "value": case_id}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "SP",
                        "display": "Surgical Pathology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": LOINC, "code": "60567-5", "display": "Comprehensive pathology report panel"}
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "issued": issued,
        "performer": [performer],
        "resultsInterpreter": [interpreter],
        "conclusion": conclusion,
    }
    # An empty description is left out: FHIR strings may not be empty.
    contained = [
        narrative(local_id, code, display, text)
        for local_id, code, display, text in (
            ("gross", "22634-0", "Path report.gross observation", macroscopic),
            ("micro", "22635-7", "Path report.microscopic observation", microscopic),
        )
        if text
    ]
    if contained:
        resource = {"resourceType": "DiagnosticReport", "contained": contained, **resource}
        resource["result"] = [{"reference": f"#{item['id']}"} for item in contained]
    if service_request_id:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{service_request_id}"}]
    if specimen_id:
        resource["specimen"] = [{"reference": f"Specimen/{specimen_id}"}]
    if imaging_study_ids:
        resource["imagingStudy"] = [{"reference": f"ImagingStudy/{study}"} for study in imaging_study_ids]
    if diagnosis_code:
        coding = {"system": ICD10, "code": diagnosis_code}
        if diagnosis_display:
            coding["display"] = diagnosis_display
        resource["conclusionCode"] = [{"coding": [coding], "text": diagnosis_display or diagnosis_code}]
    return resource


def signature_provenance(
    target: str, jws: str, *, signer: dict[str, Any], site: dict[str, Any], patient_id: str, when: str
) -> dict[str, Any]:
    """Return the Provenance that carries a pathologist's signature over one exact version of a report."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": when,
        "activity": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}
            ],
            "text": "sign",
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
                "who": signer,
                "onBehalfOf": site,
            }
        ],
        "entity": [{"role": "source", "what": {"reference": f"Patient/{patient_id}"}}],
        "signature": [
            {
                "type": [SIGNATURE_TYPE],
                "when": when,
                "who": signer,
                "targetFormat": "application/fhir+json",
                "sigFormat": "application/jose",
                "data": base64.b64encode(jws.encode("ascii")).decode("ascii"),
            }
        ],
    }
