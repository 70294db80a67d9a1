"""Run pathology consults between sites: a district site asks, a central site's pathologists read and report.

A case is recorded in the FHIR store as a ServiceRequest (to the central site, with the
clinical question) and a Specimen, with the slides' ImagingStudies as supporting
information; its state (new → in_progress → reported) lives in ``pathology_cases``.
Creating a case shares its slides and its patient with the receiving site.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from his import audit
from his.db import as_utc, utcnow
from his.errors import N_, Conflict, Forbidden, NotFound, ValidationFailed
from his.models import Site, User
from his.security import Principal
from pathology import fhir_mapping
from pathology.models import ConsultCase, Slide
from pathology.services import get_slide, record_imaging_study

REQUEST_ROLES = frozenset({"doctor", "nurse", "pathologist"})
RECEIVING_ROLES = frozenset({"pathologist"})
MAX_QUESTION = 4000
MAX_SLIDES = 50


class CaseNotFound(NotFound):
    code = "CASE_NOT_FOUND"
    message = N_("There is no such consult case.")


class CaseAccessDenied(Forbidden):
    code = "CASE_ACCESS_DENIED"
    message = N_("You may not see this consult case.")


@dataclass(frozen=True)
class CaseRequest:
    """What a district user asks the central site: for whom, what, on which slides."""

    patient_id: str
    receiving_site: str
    clinical_question: str
    specimen_type: str
    body_site: str | None = None
    slide_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseRow:
    """One line of a worklist or a case list."""

    case: ConsultCase
    slide_count: int
    waiting_seconds: int
    first_slide_id: str | None
    requesting_site: str
    receiving_site: str
    assignee: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def central_sites(session: Session) -> list[Site]:
    """Return the sites a consult can be sent to, by name."""
    return list(session.scalars(select(Site).where(Site.kind == "central").order_by(Site.name)))


def create_case(session: Session, principal: Principal, wanted: CaseRequest) -> ConsultCase:
    """Open a consult case with its Specimen and ServiceRequest and move the given slides into it.

    Raises Forbidden (audited) for a caller who may not request consults, ValidationFailed
    naming the field for a missing question, an unknown receiving site or a slide that is
    not the caller's site's, and Conflict for a slide already in another case.
    """
    if principal.kind != "user" or principal.role not in REQUEST_ROLES or principal.site_id is None:
        audit.record("create", "PathologyCase", None, outcome="denied", detail="may not request consults")
        raise Forbidden(N_("Your role may not request pathology consults."), code="CASE_REQUEST_DENIED")
    errors: dict[str, str] = {}
    question = wanted.clinical_question.strip()
    specimen_type = " ".join(wanted.specimen_type.split())
    if not question:
        errors["clinical_question"] = N_("Write the clinical question for the pathologist.")
    elif len(question) > MAX_QUESTION:
        errors["clinical_question"] = N_("Keep the clinical question under 4000 characters.")
    if not specimen_type:
        errors["specimen_type"] = N_("Say what the specimen is (for example: colon biopsy).")
    elif len(specimen_type) > 200:
        errors["specimen_type"] = N_("Keep it under 200 characters.")
    receiving = session.scalar(select(Site).where(Site.code == wanted.receiving_site, Site.kind == "central"))
    if receiving is None or receiving.id == principal.site_id:
        errors["receiving_site"] = N_("Choose a central hospital to send the case to.")
    if not wanted.slide_ids:
        errors["slide_ids"] = N_("Add at least one slide.")
    elif len(wanted.slide_ids) > MAX_SLIDES:
        errors["slide_ids"] = N_("A case holds at most 50 slides.")
    if not wanted.patient_id.strip():
        errors["patient_id"] = N_("Choose the patient.")
    if errors or receiving is None:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    slides: list[Slide] = []
    for slide_id in dict.fromkeys(wanted.slide_ids):
        try:
            slide = get_slide(session, slide_id)
        except NotFound:
            raise ValidationFailed(
                N_("Some fields are not valid."), fields={"slide_ids": N_("There is no such slide.")}
            ) from None
        if slide.site_id != principal.site_id:
            audit.record(
                "update", "Slide", slide.id, outcome="denied", detail="slide of another site in a case"
            )
            raise ValidationFailed(
                N_("Some fields are not valid."),
                fields={"slide_ids": N_("Only your site's own slides can be sent.")},
            )
        if slide.case_id and session.get(ConsultCase, slide.case_id) is not None:
            raise Conflict(N_("A slide is already in another consult case."), code="SLIDE_IN_A_CASE")
        slides.append(slide)
    patient_id = wanted.patient_id.strip()
    case_id = uuid.uuid4().hex
    requester = session.get(User, principal.user_id)
    requesting = session.get(Site, principal.site_id)
    if requesting is None:
        raise Forbidden(N_("Your role may not request pathology consults."), code="CASE_REQUEST_DENIED")
    from fhir import services as fhir_store

    specimen = fhir_store.create(
        session,
        fhir_mapping.specimen(patient_id, specimen_type, (wanted.body_site or "").strip() or None, case_id),
    )
    studies: list[str] = []
    for slide in slides:
        slide.case_id = case_id
        if slide.imaging_study_id is None:
            studies.append(record_imaging_study(session, slide, patient_id))
        else:
            study = fhir_store.read(session, "ImagingStudy", slide.imaging_study_id).resource
            if study.get("subject", {}).get("reference") != f"Patient/{patient_id}":
                raise ValidationFailed(
                    N_("Some fields are not valid."),
                    fields={"slide_ids": N_("A slide belongs to another patient.")},
                )
            studies.append(slide.imaging_study_id)
    request = fhir_store.create(
        session,
        fhir_mapping.consult_request(
            case_id=case_id,
            patient_id=patient_id,
            question=question,
            specimen_id=specimen.id,
            requester={
                "identifier": {"system": "urn:vetinh:user", "value": str(principal.user_id)},
                "display": requester.full_name if requester else principal.username,
            },
            receiving_site=fhir_mapping.site_reference(
                receiving.code, receiving.name, receiving.organization_id
            ),
            authored_on=utcnow().isoformat(timespec="seconds"),
            imaging_study_ids=studies,
        ),
    )
    case = ConsultCase(
        id=case_id,
        requesting_site_id=requesting.id,
        receiving_site_id=receiving.id,
        requested_by=principal.user_id,
        patient_id=patient_id,
        clinical_question=question,
        specimen_type=specimen_type,
        body_site=(wanted.body_site or "").strip() or None,
        status="new",
        service_request_id=request.id,
        specimen_id=specimen.id,
    )
    session.add(case)
    session.flush()
    return case


def case_role(principal: Principal, case: ConsultCase) -> str | None:
    """Say which end of the case the principal is on: "requester", "receiver", or None."""
    if principal.kind != "user" or principal.site_id is None:
        return None
    if principal.site_id == case.requesting_site_id and principal.role in REQUEST_ROLES:
        return "requester"
    if principal.site_id == case.receiving_site_id and principal.role in RECEIVING_ROLES:
        return "receiver"
    return None


def readable_case(session: Session, principal: Principal, case_id: str) -> ConsultCase:
    """Return a case the principal may see.

    Raises CaseNotFound for an unknown id and CaseAccessDenied (audited) for anyone but
    the requesting site's clinical staff and the receiving site's pathologists.
    """
    case = session.get(ConsultCase, case_id) if len(case_id) == 32 else None
    if case is None:
        raise CaseNotFound()
    if case_role(principal, case) is None:
        audit.record("read", "PathologyCase", case.id, patient_id=case.patient_id, outcome="denied")
        raise CaseAccessDenied()
    return case


def take_case(session: Session, principal: Principal, case: ConsultCase) -> ConsultCase:
    """Assign a new case to the pathologist taking it (taking one's own case again changes nothing).

    Raises Forbidden for anyone but a pathologist of the receiving site, and Conflict when
    another pathologist already took it or it is reported.
    """
    if case_role(principal, case) != "receiver":
        audit.record("update", "PathologyCase", case.id, patient_id=case.patient_id, outcome="denied")
        raise Forbidden(
            N_("Only a pathologist of the receiving hospital can take this case."), code="CASE_TAKE_DENIED"
        )
    if case.status == "reported":
        raise Conflict(N_("This case is already reported."), code="CASE_REPORTED")
    if case.status == "in_progress":
        if case.assigned_to == principal.user_id:
            return case
        raise Conflict(N_("Another pathologist already took this case."), code="CASE_TAKEN")
    case.status = "in_progress"
    case.assigned_to = principal.user_id
    case.taken_at = utcnow()
    session.flush()
    return case


def waiting_seconds(case: ConsultCase, now: datetime) -> int:
    """Return how long the case has waited for its report (until it was reported)."""
    end = as_utc(case.reported_at) if case.reported_at else now
    return max(0, int((end - as_utc(case.created_at)).total_seconds()))


def _rows(session: Session, cases: list[ConsultCase], now: datetime) -> list[CaseRow]:
    if not cases:
        return []
    ids = [case.id for case in cases]
    counts = dict(
        session.execute(
            select(Slide.case_id, func.count()).where(Slide.case_id.in_(ids)).group_by(Slide.case_id)
        ).all()
    )
    first: dict[str, str] = {}
    for case_id, slide_id in session.execute(
        select(Slide.case_id, Slide.id).where(Slide.case_id.in_(ids)).order_by(Slide.created_at, Slide.id)
    ):
        if case_id is not None:
            first.setdefault(case_id, slide_id)
    site_names = dict(session.execute(select(Site.id, Site.name)).all())
    user_ids = {case.assigned_to for case in cases if case.assigned_to}
    users = (
        dict(session.execute(select(User.id, User.full_name).where(User.id.in_(user_ids))).all())
        if user_ids
        else {}
    )
    return [
        CaseRow(
            case=case,
            slide_count=int(counts.get(case.id, 0)),
            waiting_seconds=waiting_seconds(case, now),
            first_slide_id=first.get(case.id),
            requesting_site=site_names.get(case.requesting_site_id, ""),
            receiving_site=site_names.get(case.receiving_site_id, ""),
            assignee=users.get(case.assigned_to) if case.assigned_to else None,
        )
        for case in cases
    ]


def worklist(
    session: Session, site_id: int, status: str | None = None, now: datetime | None = None
) -> list[CaseRow]:
    """Return the cases sent to a site, oldest waiting first, optionally of one status."""
    query = select(ConsultCase).where(ConsultCase.receiving_site_id == site_id)
    if status:
        query = query.where(ConsultCase.status == status)
    cases = list(session.scalars(query.order_by(ConsultCase.created_at, ConsultCase.id)))
    return _rows(session, cases, now or utcnow())


def requested_cases(session: Session, site_id: int, now: datetime | None = None) -> list[CaseRow]:
    """Return the cases a site sent, newest first."""
    query = select(ConsultCase).where(ConsultCase.requesting_site_id == site_id)
    cases = list(session.scalars(query.order_by(ConsultCase.created_at.desc(), ConsultCase.id)))
    return _rows(session, cases, now or utcnow())


def case_slides(session: Session, case: ConsultCase) -> list[Slide]:
    """Return the slides of a case in upload order."""
    return list(
        session.scalars(select(Slide).where(Slide.case_id == case.id).order_by(Slide.created_at, Slide.id))
    )


def inbox_slides(session: Session, site_id: int) -> list[Slide]:
    """Return a site's slides that are in no consult case yet, newest first."""
    in_cases = select(ConsultCase.id)
    query = select(Slide).where(
        Slide.site_id == site_id, (Slide.case_id.is_(None)) | (Slide.case_id.not_in(in_cases))
    )
    return list(session.scalars(query.order_by(Slide.created_at.desc())))


def case_summary(row: CaseRow) -> dict[str, Any]:
    """Describe a case for the API."""
    case = row.case
    return {
        "id": case.id,
        "status": case.status,
        "patient_id": case.patient_id,
        "clinical_question": case.clinical_question,
        "specimen_type": case.specimen_type,
        "body_site": case.body_site,
        "requesting_site": row.requesting_site,
        "receiving_site": row.receiving_site,
        "assigned_to": row.assignee,
        "slide_count": row.slide_count,
        "waiting_seconds": row.waiting_seconds,
        "created_at": as_utc(case.created_at).isoformat(),
        "taken_at": as_utc(case.taken_at).isoformat() if case.taken_at else None,
        "reported_at": as_utc(case.reported_at).isoformat() if case.reported_at else None,
        "service_request": f"ServiceRequest/{case.service_request_id}" if case.service_request_id else None,
        "specimen": f"Specimen/{case.specimen_id}" if case.specimen_id else None,
    }


def case_row(session: Session, case: ConsultCase) -> CaseRow:
    """Return the list line of one case."""
    return _rows(session, [case], utcnow())[0]
