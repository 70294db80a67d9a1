"""Register patients: the FHIR Patient in the store, the login account, and who may see them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from his.accounts import NewUser, create_user
from his.errors import N_, ValidationFailed
from his.identifiers import NATIONAL_ID_SYSTEM, InvalidNationalId, validate_cccd
from his.models import PatientSiteAccess, User

FHIR_GENDERS = {"male", "female", "other", "unknown"}


@dataclass(frozen=True)
class PatientDetails:
    """Who a patient is, as registration collects it."""

    full_name: str
    birth_date: date | None
    sex: str
    phone: str | None = None
    email: str | None = None
    national_id: str | None = None
    address: str | None = None


def patient_resource(details: PatientDetails) -> dict[str, Any]:
    """Map registration details to a FHIR R4 Patient (pure; the Vietnamese name is kept whole)."""
    parts = details.full_name.split()
    name: dict[str, Any] = {"use": "official", "text": details.full_name}
    if parts:
        name["family"] = parts[0]
        if len(parts) > 1:
            name["given"] = parts[1:]
    resource: dict[str, Any] = {"resourceType": "Patient", "active": True, "name": [name]}
    if details.national_id:
        resource["identifier"] = [{"system": NATIONAL_ID_SYSTEM, "value": details.national_id}]
    resource["gender"] = details.sex
    if details.birth_date:
        resource["birthDate"] = details.birth_date.isoformat()
    telecom = []
    if details.phone:
        telecom.append({"system": "phone", "value": details.phone, "use": "mobile"})
    if details.email:
        telecom.append({"system": "email", "value": details.email})
    if telecom:
        resource["telecom"] = telecom
    if details.address:
        resource["address"] = [{"text": details.address, "country": "VN"}]
    return resource


def validate_details(details: PatientDetails) -> PatientDetails:
    """Check a patient's details and return them normalised.

    Raises ValidationFailed naming every bad field.
    """
    errors: dict[str, str] = {}
    if not details.full_name.strip():
        errors["full_name"] = N_("The name is required.")
    if details.birth_date is None:
        errors["birth_date"] = N_("The date of birth is required.")
    elif details.birth_date > date.today():
        errors["birth_date"] = N_("The date of birth cannot be in the future.")
    if details.sex not in FHIR_GENDERS:
        errors["sex"] = N_("Choose male, female, other or unknown.")
    national_id = None
    if details.national_id:
        try:
            national_id = validate_cccd(details.national_id, birth_date=details.birth_date, sex=details.sex)
        except InvalidNationalId as exc:
            errors["national_id"] = str(exc)
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    return replace(details, full_name=" ".join(details.full_name.split()), national_id=national_id)


def create_patient(session: Session, details: PatientDetails, *, site_id: int | None) -> str:
    """Store a new Patient and let the registering site see it; return the Patient id."""
    from fhir import services as store

    details = validate_details(details)
    stored = store.create(session, patient_resource(details))
    if site_id is not None:
        session.add(PatientSiteAccess(patient_id=stored.id, site_id=site_id, reason="care"))
    session.flush()
    return stored.id


def register_patient_account(
    session: Session,
    details: PatientDetails,
    *,
    username: str,
    password: str,
    home_site_id: int | None,
) -> User:
    """Self-registration: create the Patient and the patient's login in one unit of work.

    Raises ValidationFailed or Conflict before anything is written.
    """
    details = validate_details(details)
    # The account is checked first; any later failure rolls back the request's whole unit
    # of work, so neither a Patient without an account nor the reverse stays behind.
    probe = NewUser(
        username=username,
        password=password,
        full_name=details.full_name,
        role="patient",
        email=details.email,
        phone=details.phone,
        birth_date=details.birth_date,
        sex=details.sex,
        national_id=details.national_id,
    )
    user = create_user(session, probe)
    user.patient_id = create_patient(session, details, site_id=home_site_id)
    return user


def patient_summary(session: Session, patient_id: str) -> dict[str, Any]:
    """Read a patient from the store as the API's small summary.

    Raises NotFound when there is no such patient (or it was deleted).
    """
    from fhir import services as store

    resource = store.read(session, "Patient", patient_id).resource
    name = (resource.get("name") or [{}])[0]
    full_name = name.get("text") or " ".join([name.get("family", ""), *name.get("given", [])]).strip()
    national_id = next(
        (i.get("value") for i in resource.get("identifier", []) if i.get("system") == NATIONAL_ID_SYSTEM),
        None,
    )
    phone = next((t.get("value") for t in resource.get("telecom", []) if t.get("system") == "phone"), None)
    return {
        "id": patient_id,
        "full_name": full_name,
        "birth_date": resource.get("birthDate"),
        "sex": resource.get("gender"),
        "national_id": national_id,
        "phone": phone,
        "fhir": f"/fhir/R4/Patient/{patient_id}",
    }
