"""Sign an encounter and its prescription, verify any signature, and amend a signed record.

Signing freezes exact versions: the Provenance lists ``Type/id/_history/n`` targets and
carries a JWS over the canonical JSON (RFC 8785) of those versions. Verification reads
the same versions back, so any change to them, or any later version not covered by an
amendment's own signature, is found and named. Raises ``his.errors`` exceptions.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from fhir import services as store
from his import events
from his.db import as_utc, utcnow
from his.errors import N_, Conflict, Gone, NotFound, ValidationFailed
from his.models import User
from his.records import mapping
from his.records.canonical import canonicalize
from his.records.models import Prescription, PrescriptionItem, Signature
from his.records.safety import missing_overrides
from his.records.services import (
    PRESCRIPTION_VALID_DAYS,
    Actor,
    _by_encounter,
    draft_of,
    ensure_open,
    now_text,
    patient_allergy_resources,
    practitioner_reference,
    replan,
)
from his.records.signing import sign_detached, signer_key, trusted_authorities, verify_detached

SIGNED_TYPES = ("Observation", "Condition", "ServiceRequest", "MedicationRequest", "Composition")


def refuse_signed_changes(session: Session, resource_type: str, resource_id: str) -> None:
    """FHIR write guard: a client may not update or delete a resource a signature covers.

    Raises Conflict (409) naming the amendment path; changes go through :func:`amend`.
    """
    if resource_type not in SIGNED_TYPES:
        return
    marker = f'%"{resource_type}/{resource_id}/_history/%'
    signed = session.scalar(select(Signature.id).where(cast(Signature.targets, Text).like(marker)).limit(1))
    if signed is not None:
        raise Conflict(
            N_("This resource is part of a signed record and cannot be changed; amend the record instead."),
            code="RECORD_SIGNED",
        )


class OverrideRequired(ValidationFailed):
    """Signing was refused: some safety warnings have no override reason."""

    code = "SAFETY_OVERRIDE_REQUIRED"


def _update(session: Session, resource: dict[str, Any], **changes: Any) -> store.StoredResource:
    body = {k: v for k, v in resource.items() if k != "meta"}
    body.update(changes)
    return store.update(session, body["resourceType"], body["id"], body)


def _versioned(stored: store.StoredResource) -> str:
    return f"{stored.type}/{stored.id}/_history/{stored.version_id}"


def document_of(resources: list[dict[str, Any]]) -> bytes:
    """Return the canonical bytes that a signature covers for these resources."""
    ordered = sorted(resources, key=lambda r: (r["resourceType"], r["id"]))
    return canonicalize(ordered)


def sign_encounter(
    session: Session,
    encounter_id: str,
    actor: Actor,
    *,
    overrides: dict[str, str],
    secret: str,
    on: date,
    locale: str = "vi",
) -> Signature:
    """Close and sign the encounter with its prescription; return the signature row.

    Raises OverrideRequired (422) naming each warning without a reason, ValidationFailed
    when a prescription has no diagnosis, Conflict when already signed.
    """
    encounter = ensure_open(session, encounter_id)
    user = session.get(User, actor.user_id)
    if user is None:
        raise NotFound(N_("Unknown user."))
    who = practitioner_reference(session, actor)
    when = now_text()
    prescription = draft_of(session, encounter_id)
    issues: list[store.StoredResource] = []
    if prescription is not None:
        if not _by_encounter(session, "Condition", encounter_id):
            raise ValidationFailed(
                N_("Record a diagnosis before signing a prescription."), fields={"icd10": N_("Required.")}
            )
        plan = replan(session, prescription, on=on, locale=locale)
        missing = missing_overrides(list(plan.warnings), overrides)
        if missing:
            raise OverrideRequired(
                N_("Give a reason to override each warning before signing."),
                fields={w.key: w.render() for w in missing},
            )
        items = session.scalars(
            select(PrescriptionItem).where(PrescriptionItem.prescription_id == prescription.id)
        ).all()
        request_of = {i.drug_code: f"MedicationRequest/{i.medication_request_id}" for i in items}
        for warning in plan.warnings:
            resource = mapping.detected_issue(
                warning,
                warning.render(),
                overrides[warning.key].strip(),
                encounter.patient_id,
                [request_of[c] for c in warning.drugs if c in request_of],
                when,
                who,
            )
            issues.append(store.create(session, resource))
        # The prescription is valid for a few days from signing, not from the first draft.
        prescription.valid_until = on + timedelta(days=PRESCRIPTION_VALID_DAYS - 1)
        for item in items:
            current = store.read(session, "MedicationRequest", item.medication_request_id).resource
            dispense = dict(current["dispenseRequest"])
            dispense["validityPeriod"] = {
                "start": on.isoformat(),
                "end": prescription.valid_until.isoformat(),
            }
            _update(session, current, status="active", dispenseRequest=dispense)
        prescription.status = "signed"
        prescription.signed_at = utcnow()
    period = dict(encounter.resource.get("period") or {})
    period.setdefault("start", when)
    period["end"] = when
    stored_encounter = _update(session, encounter.resource, status="finished", period=period)
    for note in _by_encounter(session, "Composition", encounter_id):
        _update(session, note, status="final")
    # The patient's identity as it was is signed too: it says whom the record is about, and
    # puts the Provenance in the patient's compartment (so Patient/$everything returns it).
    targets: list[store.StoredResource] = [
        store.read(session, "Patient", encounter.patient_id),
        stored_encounter,
        *issues,
    ]
    for rtype in SIGNED_TYPES:
        result = store.search(
            session, rtype, [("encounter", f"Encounter/{encounter_id}"), ("_count", "1000")]
        )
        targets.extend(result.matches)
    for allergy in patient_allergy_resources(session, encounter.patient_id):
        if (allergy.get("encounter") or {}).get("reference") == f"Encounter/{encounter_id}":
            targets.append(store.read(session, "AllergyIntolerance", allergy["id"]))
    signature = _sign(session, targets, user, actor, who, when, secret, encounter_id, prescription)
    events.publish(
        "record.signed",
        {
            "encounter": encounter_id,
            "patient": encounter.patient_id,
            "prescription": prescription.code if prescription else None,
        },
    )
    if prescription is not None:
        from his.records.national import enqueue

        enqueue(session, prescription)
    return signature


def _sign(
    session: Session,
    targets: list[store.StoredResource],
    user: User,
    actor: Actor,
    who: str,
    when: str,
    secret: str,
    encounter_id: str,
    prescription: Prescription | None,
    *,
    revises: list[str] | None = None,
    reason: str | None = None,
    supersedes: Signature | None = None,
) -> Signature:
    key = signer_key(session, user, secret)
    unique = {(t.type, t.id): t for t in targets}
    resources = [t.resource for t in unique.values()]
    payload = document_of(resources)
    jws = sign_detached(key, secret, payload)
    references = sorted(_versioned(t) for t in unique.values())
    provenance = store.create(
        session,
        mapping.provenance(
            references,
            when,
            who,
            jws,
            activity="amend" if revises else "sign",
            revises=revises,
            reason=reason,
        ),
    )
    row = Signature(
        encounter_id=encounter_id,
        prescription_id=prescription.id if prescription else None,
        provenance_id=provenance.id,
        key_id=key.id,
        signer_id=actor.user_id,
        targets=references,
        document=payload.decode("utf-8"),
        supersedes_id=supersedes.id if supersedes else None,
    )
    session.add(row)
    session.flush()
    return row


def amend(
    session: Session,
    encounter_id: str,
    resource: dict[str, Any],
    actor: Actor,
    *,
    reason: str,
    secret: str,
) -> Signature:
    """Write a new version of a signed resource and sign it with a Provenance naming the old one.

    Raises ValidationFailed without a reason, Conflict for a prescription line (a sent
    prescription is never edited) or a resource the encounter's signature does not cover.
    """
    if len(reason.strip()) < 3:
        raise ValidationFailed(N_("Say why the record is amended."), fields={"reason": N_("Required.")})
    rtype, rid = resource.get("resourceType", ""), resource.get("id", "")
    if rtype == "MedicationRequest":
        raise Conflict(
            N_("A signed prescription is never changed; write a new one."), code="PRESCRIPTION_SIGNED"
        )
    signatures = session.scalars(
        select(Signature).where(Signature.encounter_id == encounter_id).order_by(Signature.id)
    ).all()
    if not signatures:
        raise Conflict(N_("This record is not signed yet; change it directly."), code="RECORD_NOT_SIGNED")
    current = store.read(session, rtype, rid)
    covering = [s for s in signatures if any(t.startswith(f"{rtype}/{rid}/_history/") for t in s.targets)]
    if not covering:
        raise Conflict(N_("This resource is not part of the signed record."), code="NOT_SIGNED_HERE")
    user = session.get(User, actor.user_id)
    if user is None:
        raise NotFound(N_("Unknown user."))
    new = _update(session, resource)
    who = practitioner_reference(session, actor)
    return _sign(
        session,
        [new],
        user,
        actor,
        who,
        now_text(),
        secret,
        encounter_id,
        None,
        revises=[_versioned(current)],
        reason=reason.strip(),
        supersedes=covering[-1],
    )


def addendum(
    session: Session,
    encounter_id: str,
    resource: dict[str, Any],
    actor: Actor,
    *,
    reason: str,
    secret: str,
) -> Signature:
    """Add a new resource to a signed encounter and sign it on its own, with the reason.

    Raises ValidationFailed without a reason, Conflict when the encounter is not signed.
    """
    if len(reason.strip()) < 3:
        raise ValidationFailed(N_("Say why the record is amended."), fields={"reason": N_("Required.")})
    latest = session.scalar(
        select(Signature).where(Signature.encounter_id == encounter_id).order_by(Signature.id.desc())
    )
    if latest is None:
        raise Conflict(N_("This record is not signed yet; change it directly."), code="RECORD_NOT_SIGNED")
    user = session.get(User, actor.user_id)
    if user is None:
        raise NotFound(N_("Unknown user."))
    created = store.create(session, resource)
    who = practitioner_reference(session, actor)
    return _sign(
        session,
        [created],
        user,
        actor,
        who,
        now_text(),
        secret,
        encounter_id,
        None,
        reason=reason.strip(),
        supersedes=latest,
    )


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong, naming the resource and, where known, the fields."""

    reference: str
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class Verification:
    """The outcome of verifying one signature."""

    provenance_id: str
    signer: str = ""
    signed_at: str = ""
    targets: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    amended_by: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def _diff(signed: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(signed, dict) and isinstance(now, dict):
        found: list[str] = []
        for key in sorted(set(signed) | set(now)):
            if key not in signed or key not in now:
                found.append(f"{path}.{key}".lstrip("."))
            else:
                found.extend(_diff(signed[key], now[key], f"{path}.{key}"))
        return found
    if isinstance(signed, list) and isinstance(now, list) and len(signed) == len(now):
        found = []
        for index, (a, b) in enumerate(zip(signed, now, strict=True)):
            found.extend(_diff(a, b, f"{path}[{index}]"))
        return found
    if canonicalize(signed) != canonicalize(now):
        return [path.lstrip(".") or "(whole)"]
    return []


def verify(session: Session, signature: Signature) -> Verification:
    """Check a signature and that the signed versions are still exactly what was signed."""
    report = Verification(signature.provenance_id)
    try:
        provenance_stored = store.read(session, "Provenance", signature.provenance_id)
        provenance = provenance_stored.resource
        jws = base64.b64decode(provenance["signature"][0]["data"]).decode("ascii")
    except (NotFound, Gone, KeyError, IndexError, ValueError):
        report.problems.append(
            Problem(
                f"Provenance/{signature.provenance_id}",
                N_("The signature's Provenance is missing or damaged."),
            )
        )
        return report
    if provenance_stored.version_id != 1:
        report.problems.append(
            Problem(f"Provenance/{signature.provenance_id}", N_("The Provenance was changed after signing."))
        )
    report.signed_at = provenance.get("recorded", "")
    report.targets = [t["reference"] for t in provenance.get("target", [])]
    if sorted(report.targets) != sorted(signature.targets):
        report.problems.append(
            Problem(f"Provenance/{signature.provenance_id}", N_("The Provenance's targets were changed."))
        )
    signed_resources = {
        f"{r['resourceType']}/{r['id']}": r for r in json.loads(signature.document, parse_float=Decimal)
    }
    now_resources = []
    for reference in signature.targets:
        rtype, rid, _h, version = reference.split("/")
        try:
            current = store.vread(session, rtype, rid, version).resource
        except (NotFound, Gone):
            report.problems.append(Problem(reference, N_("The signed version is missing.")))
            continue
        now_resources.append(current)
        paths = _diff(signed_resources.get(f"{rtype}/{rid}"), current)
        if paths:
            report.problems.append(Problem(reference, N_("Changed since it was signed."), tuple(paths[:10])))
        latest = store.read(session, rtype, rid) if _exists(session, rtype, rid) else None
        # A patient's later details (a new address) do not change what was signed.
        if latest is not None and latest.version_id > int(version) and rtype != "Patient":
            amended = session.scalars(select(Signature).where(Signature.supersedes_id.is_not(None))).all()
            newer = f"{rtype}/{rid}/_history/{latest.version_id}"
            unchanged = not _diff(_without_meta(current), _without_meta(latest.resource))
            if unchanged:
                pass  # saved again with the same content: nothing the signature covers changed
            elif any(newer in s.targets for s in amended):
                report.amended_by.append(newer)
            else:
                report.problems.append(
                    Problem(
                        reference, N_("A newer version was written without an amendment signature."), (newer,)
                    )
                )
    trusted = trusted_authorities(session)
    at = as_utc(signature.signed_at)
    stored_check = verify_detached(jws, signature.document.encode("utf-8"), trusted, at=at)
    report.signer = stored_check.signer
    if not stored_check.valid:
        report.problems.append(Problem(f"Provenance/{signature.provenance_id}", stored_check.problem))
    elif len(now_resources) == len(signature.targets):
        live_check = verify_detached(jws, document_of(now_resources), trusted, at=at)
        if not live_check.valid and not any(p.paths for p in report.problems):
            report.problems.append(Problem(f"Provenance/{signature.provenance_id}", live_check.problem))
    return report


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _exists(session: Session, rtype: str, rid: str) -> bool:
    try:
        store.read(session, rtype, rid)
    except (NotFound, Gone):
        return False
    return True


def signatures_for(session: Session, target: str) -> list[Signature]:
    """Find signatures by Provenance id, encounter id or prescription code.

    Raises NotFound when nothing matches.
    """
    target = target.strip()
    found = session.scalars(select(Signature).where(Signature.provenance_id == target)).all()
    if not found:
        found = session.scalars(
            select(Signature).where(Signature.encounter_id == target).order_by(Signature.id)
        ).all()
    if not found:
        from his.records.codes import parse_code

        try:
            code = str(parse_code(target))
        except ValidationFailed:
            code = ""
        prescription = session.scalar(select(Prescription).where(Prescription.code == code)) if code else None
        if prescription is not None:
            found = session.scalars(
                select(Signature).where(Signature.prescription_id == prescription.id)
            ).all()
    if not found:
        raise NotFound(N_("No signature matches this id or code."), code="SIGNATURE_NOT_FOUND")
    return list(found)
