"""Decide, in one place, who may read or write which patient's data.

The rules: a patient sees their own record and those of patients linked to their
account (a child); staff see the patients of their own site and of patients another
site shared with theirs (referral, consult); an admin manages the system but reads no
clinical data. Every refusal raises Forbidden and leaves an audit record.
"""

from __future__ import annotations

from flask import g
from sqlalchemy import bindparam, select

from his import audit
from his.db import core_connection, get_session
from his.errors import Forbidden
from his.models import PatientLink, PatientSiteAccess
from his.security import Principal

CLINICAL_READ_ROLES = frozenset(
    {"receptionist", "nurse", "doctor", "pharmacist", "pathologist", "cashier", "manager"}
)
CLINICAL_WRITE_ROLES = frozenset({"receptionist", "nurse", "doctor", "pharmacist", "pathologist", "cashier"})


def linked_patient_ids(principal: Principal) -> set[str]:
    """Return the patient ids a patient account may act for (their own and linked ones)."""
    ids: set[str] = set()
    if principal.patient_id:
        ids.add(principal.patient_id)
    if principal.user_id is not None:
        ids.update(
            get_session().scalars(
                select(PatientLink.patient_id).where(PatientLink.user_id == principal.user_id)
            )
        )
    return ids


# Built once: every access check of a staff member runs it.
_SITE_ACCESS_QUERY = select(PatientSiteAccess.id).where(
    PatientSiteAccess.patient_id == bindparam("patient_id"), PatientSiteAccess.site_id == bindparam("site_id")
)


def _seen_pairs() -> set[tuple[int, str]]:
    """Return the (site, patient) pairs this request already found or granted."""
    pairs: set[tuple[int, str]] | None = g.get("_vetinh_site_patient_pairs")
    if pairs is None:
        pairs = g._vetinh_site_patient_pairs = set()
    return pairs


def site_may_see(site_id: int | None, patient_id: str) -> bool:
    """Tell whether a site cares for, or was shared, this patient.

    A yes is remembered for the rest of the request (access is never withdrawn within
    one), so a request that checks the caller's access and then grants the same site
    asks the database once.
    """
    if site_id is None:
        return False
    seen = _seen_pairs()
    if (site_id, patient_id) in seen:
        return True
    found = core_connection(get_session()).scalar(
        _SITE_ACCESS_QUERY, {"patient_id": patient_id, "site_id": site_id}
    )
    if found is not None:
        seen.add((site_id, patient_id))
    return found is not None


def may_access_patient(principal: Principal, patient_id: str, action: str) -> bool:
    """Tell whether the principal may ``action`` ("read"/"write") this patient's data."""
    if not principal.is_authenticated:
        return False
    if principal.role == "patient":
        return patient_id in linked_patient_ids(principal)
    if principal.kind == "client":
        return site_may_see(principal.site_id, patient_id) if principal.site_id else True
    roles = CLINICAL_WRITE_ROLES if action == "write" else CLINICAL_READ_ROLES
    if principal.role not in roles:
        return False
    return site_may_see(principal.site_id, patient_id)


def ensure_patient_access(principal: Principal, patient_id: str, action: str) -> None:
    """Raise Forbidden, and audit the refusal, unless the principal may touch this patient."""
    if not may_access_patient(principal, patient_id, action):
        audit.record(action, "Patient", patient_id, patient_id=patient_id, outcome="denied")
        raise Forbidden("You may not access this patient's data.", code="PATIENT_ACCESS_DENIED")


def ensure_role(principal: Principal, *roles: str) -> None:
    """Raise Forbidden, and audit the refusal, unless the principal has one of the roles."""
    if principal.role not in roles:
        audit.record("access", "Page", None, outcome="denied", detail="role required: " + ",".join(roles))
        raise Forbidden("Your role does not allow this.", code="ROLE_REQUIRED")


def grant_site_access(patient_id: str, site_id: int, reason: str = "care") -> None:
    """Let a site see a patient (idempotent)."""
    session = get_session()
    if not site_may_see(site_id, patient_id):
        session.add(PatientSiteAccess(patient_id=patient_id, site_id=site_id, reason=reason))
        session.flush()
        _seen_pairs().add((site_id, patient_id))
