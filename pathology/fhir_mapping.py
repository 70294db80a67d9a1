"""Map a stored slide to the FHIR ImagingStudy (modality SM) that records it in the patient's record."""

from __future__ import annotations

import uuid
from typing import Any

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
        resource["started"] = slide.scanned_at.isoformat()
    if slide.case_id:
        resource["note"] = [{"text": f"Case {slide.case_id}"}]
    return resource
