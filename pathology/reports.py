"""Write and sign the pathologist's report of a consult case.

A report is a draft (``pathology_reports``) that only the pathologist who took the case
edits. Signing writes the final DiagnosticReport (macroscopic and microscopic
descriptions as contained Observations, the conclusion and its ICD-10 code) to the FHIR
store, signs its exact stored version with the pathologist's key through the medical
record's signing service (``his.records.signing``: per-signer X.509 key from the site's
CA, a detached JWS over the RFC 8785 canonical JSON), records the signature in a
Provenance, marks the ServiceRequest completed and the case reported. From then on
nothing of it changes; verification names any later change.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from his.db import as_utc, utcnow
from his.errors import N_, Conflict, Forbidden, ValidationFailed, VetinhError
from his.models import Site, User
from his.records.canonical import canonicalize
from his.records.signing import sign_detached, signer_key, trusted_authorities, verify_detached
from his.security import Principal
from pathology import fhir_mapping
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


def sign_report(session: Session, principal: Principal, case: ConsultCase, secret: str) -> CaseReport:
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
    user = session.get(User, principal.user_id) if principal.user_id is not None else None
    if site is None or user is None:
        raise Conflict(
            N_("The receiving hospital or the pathologist no longer exists."), code="SIGNER_MISSING"
        )
    key = signer_key(session, user, secret)
    name = user.full_name or user.username
    studies = [slide.imaging_study_id for slide in case_slides(session, case) if slide.imaging_study_id]
    now = utcnow().isoformat(timespec="seconds")
    pathologist = {
        "identifier": {"system": fhir_mapping.USER_IDENTIFIER_SYSTEM, "value": str(user.id)},
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
    jws = sign_detached(key, secret, canonicalize(stored.resource))
    provenance = fhir_store.create(
        session,
        fhir_mapping.signature_provenance(
            f"DiagnosticReport/{stored.id}/_history/{stored.version_id}",
            jws,
            signer=pathologist,
            site=fhir_mapping.site_reference(site.code, site.name, site.organization_id),
            patient_id=case.patient_id,
            when=now,
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


@dataclass(frozen=True)
class Verification:
    """Whether a signed report still is what was signed, who signed it, and what is wrong if not."""

    valid: bool
    reason: str
    signer: str = ""
    fingerprint: str = ""


def verify_report(session: Session, report: CaseReport) -> Verification:
    """Check the signed report in the store against its signature and the hospital's CAs; never raises.

    The signed version must still hold the signed content, no later version may exist, and
    the signer's certificate must come from a CA this hospital trusts.
    """
    from fhir import services as fhir_store

    if report.status != "signed" or not report.diagnostic_report_id or not report.provenance_id:
        return Verification(False, N_("The report is not signed."))
    try:
        provenance = fhir_store.read(session, "Provenance", report.provenance_id).resource
        target = str(provenance["target"][0]["reference"])
        jws = base64.b64decode(provenance["signature"][0]["data"]).decode("ascii")
        rtype, rid, _history, version = target.split("/")
        signed = fhir_store.vread(session, rtype, rid, version).resource
        latest = fhir_store.read(session, rtype, rid)
    except (VetinhError, KeyError, IndexError, ValueError, TypeError):
        return Verification(False, N_("The signed report or its signature is missing from the record."))
    if rid != report.diagnostic_report_id:
        return Verification(False, N_("The signature is for another report."))
    at = as_utc(report.signed_at) if report.signed_at else None
    check = verify_detached(jws, canonicalize(signed), trusted_authorities(session), at=at)
    if not check.valid:
        return Verification(False, check.problem, check.signer, check.fingerprint)
    if latest.version_id != int(version):
        return Verification(
            False, N_("The report was changed after it was signed."), check.signer, check.fingerprint
        )
    return Verification(True, N_("The signature is valid."), check.signer, check.fingerprint)


def report_summary(report: CaseReport | None, verification: Verification | None = None) -> dict[str, Any]:
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
            "certificate_sha256": verification.fingerprint,
        }
    return body
