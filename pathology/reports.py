"""Write and sign the pathologist's report of a consult case.

A report is a draft (``pathology_reports``) that only the pathologist who took the case
edits. Signing writes the final DiagnosticReport (macroscopic and microscopic
descriptions as contained Observations, the conclusion and its ICD-10 code) to the FHIR
store, signs its canonical JSON with the pathologist's key (a Provenance), marks the
ServiceRequest completed and the case reported. From then on nothing of it changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from his.db import as_utc, utcnow
from his.errors import N_, Conflict, Forbidden, ValidationFailed
from his.models import Site
from his.security import Principal
from pathology import fhir_mapping, signing
from pathology.cases import case_role, case_slides
from pathology.models import CaseReport, ConsultCase

ICD10_CODE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
MAX_TEXT = 20000


class ReportSigned(Conflict):
    code = "REPORT_SIGNED"
    message = N_("The report is signed and can no longer change.")


@dataclass(frozen=True)
class ReportInput:
    """What the pathologist writes."""

    macroscopic: str = ""
    microscopic: str = ""
    conclusion: str = ""
    diagnosis_code: str = ""
    diagnosis_display: str = ""


def get_report(session: Session, case: ConsultCase) -> CaseReport | None:
    """Return the case's report, draft or signed, if one was started."""
    return session.get(CaseReport, case.id)


def _ensure_author(principal: Principal, case: ConsultCase) -> None:
    if case_role(principal, case) != "receiver":
        raise Forbidden(
            N_("Only the receiving hospital's pathologists report on this case."), code="REPORT_DENIED"
        )
    if case.status == "reported":
        raise ReportSigned()
    if case.status != "in_progress" or case.assigned_to != principal.user_id:
        raise Forbidden(N_("Take the case before writing its report."), code="REPORT_NOT_ASSIGNED")


def save_draft(session: Session, principal: Principal, case: ConsultCase, data: ReportInput) -> CaseReport:
    """Save the report's draft.

    Raises Forbidden unless the principal is the pathologist who took the case,
    ReportSigned once it is signed, ValidationFailed for an invalid ICD-10 code or text
    that is too long.
    """
    _ensure_author(principal, case)
    errors: dict[str, str] = {}
    for name in ("macroscopic", "microscopic", "conclusion"):
        if len(getattr(data, name)) > MAX_TEXT:
            errors[name] = N_("Keep it under 20000 characters.")
    code = data.diagnosis_code.strip().upper()
    if code and not ICD10_CODE.match(code):
        errors["diagnosis_code"] = N_("Use an ICD-10 code such as C18.7.")
    if len(data.diagnosis_display) > 300:
        errors["diagnosis_display"] = N_("Keep it under 300 characters.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    report = get_report(session, case)
    if report is None:
        report = CaseReport(case_id=case.id, status="draft")
        session.add(report)
    report.author_id = principal.user_id
    report.macroscopic = data.macroscopic.strip()
    report.microscopic = data.microscopic.strip()
    report.conclusion = data.conclusion.strip()
    report.diagnosis_code = code or None
    report.diagnosis_display = " ".join(data.diagnosis_display.split()) or None
    report.updated_at = utcnow()
    session.flush()
    return report


def sign_report(session: Session, principal: Principal, case: ConsultCase, secret: bytes) -> CaseReport:
    """Sign the saved draft: write the DiagnosticReport and its signed Provenance, close the case.

    Raises Forbidden unless the principal is the pathologist who took the case,
    ReportSigned when it is already signed, ValidationFailed naming what a signed report
    still lacks (microscopic description, conclusion, coded diagnosis).
    """
    _ensure_author(principal, case)
    report = get_report(session, case)
    missing: dict[str, str] = {}
    if report is None or not report.microscopic:
        missing["microscopic"] = N_("Describe what you saw under the microscope.")
    if report is None or not report.conclusion:
        missing["conclusion"] = N_("Write the conclusion.")
    if report is None or not report.diagnosis_code:
        missing["diagnosis_code"] = N_("Code the diagnosis (ICD-10).")
    if missing or report is None:
        raise ValidationFailed(
            N_("The report cannot be signed yet."), code="REPORT_INCOMPLETE", fields=missing
        )
    from fhir import services as fhir_store

    site = session.get(Site, case.receiving_site_id)
    if site is None:
        raise Conflict(N_("The receiving hospital no longer exists."), code="SITE_MISSING")
    name = principal.full_name or principal.username
    assert principal.user_id is not None
    signer = signing.signer_for(session, site, principal.user_id, name, secret)
    studies = [slide.imaging_study_id for slide in case_slides(session, case) if slide.imaging_study_id]
    now = utcnow().isoformat(timespec="seconds")
    pathologist = {
        "identifier": {"system": signing.USER_IDENTIFIER_SYSTEM, "value": str(principal.user_id)},
        "display": name,
    }
    stored = fhir_store.create(
        session,
        fhir_mapping.diagnostic_report(
            case_id=case.id,
            patient_id=case.patient_id,
            service_request_id=case.service_request_id,
            specimen_id=case.specimen_id,
            imaging_study_ids=studies,
            macroscopic=report.macroscopic,
            microscopic=report.microscopic,
            conclusion=report.conclusion,
            diagnosis_code=report.diagnosis_code,
            diagnosis_display=report.diagnosis_display,
            performer=fhir_mapping.site_reference(site.code, site.name, site.organization_id),
            interpreter=pathologist,
            issued=now,
        ),
    )
    content = signing.signed_content(stored.resource)
    provenance = fhir_store.create(
        session,
        signing.provenance(
            f"DiagnosticReport/{stored.id}/_history/{stored.version_id}",
            content,
            signer,
            user_id=principal.user_id,
            full_name=name,
            site=site,
            patient_id=case.patient_id,
        ),
    )
    if case.service_request_id:
        request = fhir_store.read(session, "ServiceRequest", case.service_request_id).resource
        request.pop("meta", None)
        request["status"] = "completed"
        fhir_store.update(session, "ServiceRequest", case.service_request_id, request)
    moment = utcnow()
    report.status = "signed"
    report.diagnostic_report_id = stored.id
    report.provenance_id = provenance.id
    report.signed_at = moment
    case.status = "reported"
    case.reported_at = moment
    session.flush()
    return report


def verify_report(session: Session, case: ConsultCase, report: CaseReport) -> signing.Verification:
    """Check the signed report as it is in the store now against its signature and the site's CA; never raises."""
    from fhir import services as fhir_store
    from his.errors import VetinhError

    if report.status != "signed" or not report.diagnostic_report_id or not report.provenance_id:
        return signing.Verification(False, N_("The report is not signed."))
    ca = signing.site_ca_certificate(session, case.receiving_site_id)
    if ca is None:
        return signing.Verification(False, N_("The hospital's CA certificate is missing."))
    try:
        current = fhir_store.read(session, "DiagnosticReport", report.diagnostic_report_id).resource
        provenance = fhir_store.read(session, "Provenance", report.provenance_id).resource
    except VetinhError:
        return signing.Verification(False, N_("The signed report is no longer in the record."))
    return signing.verify_provenance(provenance, signing.signed_content(current), ca)


def report_summary(
    report: CaseReport | None, verification: signing.Verification | None = None
) -> dict[str, Any]:
    """Describe a report for the API."""
    if report is None:
        return {"status": "none"}
    body: dict[str, Any] = {
        "status": report.status,
        "macroscopic": report.macroscopic,
        "microscopic": report.microscopic,
        "conclusion": report.conclusion,
        "diagnosis": {
            "system": fhir_mapping.ICD10,
            "code": report.diagnosis_code,
            "display": report.diagnosis_display,
        }
        if report.diagnosis_code
        else None,
        "signed_at": as_utc(report.signed_at).isoformat() if report.signed_at else None,
        "diagnostic_report": f"DiagnosticReport/{report.diagnostic_report_id}"
        if report.diagnostic_report_id
        else None,
        "provenance": f"Provenance/{report.provenance_id}" if report.provenance_id else None,
    }
    if verification is not None:
        body["signature"] = {
            "valid": verification.valid,
            "message": verification.reason,
            "signer": verification.signer,
            "certificate_sha256": verification.certificate_sha256,
        }
    return body
