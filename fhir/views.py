"""Serve the FHIR R4 REST API at ``/fhir/R4``: translate HTTP to store calls and back.

Responses carry the stored JSON text as it is; Bundles are assembled around those
texts without parsing them again. Every interaction is audited, and access follows
the bearer token's SMART scopes and the patient-access policy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from sqlalchemy.sql import Select

import fhir.jobs  # noqa: F401  (registers the FHIR jobs; the app factory imports only this module)
from fhir import export, jsontext, services
from fhir.capability import capability_statement
from fhir.searchparams import RESOURCE_PARAMS
from fhir.services import SearchResult, StoredResource
from fhir.validation import is_resource_type, preload_models
from his import audit
from his.db import begin_immediate, get_session
from his.errors import (
    BadRequest,
    Forbidden,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from his.security import Principal, current_principal

bp = Blueprint("fhir", __name__, url_prefix="/fhir/R4")


@bp.record_once
def _load_models(_state: BlueprintSetupState) -> None:
    """Load the validators of the types the store indexes while the worker starts.

    Otherwise the first writes each worker serves pay about a second to import them.
    """
    preload_models(RESOURCE_PARAMS)


FHIR_JSON = "application/fhir+json"
JSON_TYPES = {FHIR_JSON, "application/json", "application/json+fhir", "json", "text/json"}
DIRECTORY_TYPES = frozenset(
    {"Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService", "Medication"}
)
"""Types a patient token may read outside its compartment: who and where cares for them."""
XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "xml", "application/xml+fhir"}


@dataclass
class _AuditNote:
    action: str
    entity_type: str
    entity_id: str | None = None
    patient_id: str | None = None
    detail: str | None = None


def _note(action: str, entity_type: str, entity_id: str | None = None, patient_id: str | None = None) -> None:
    g.fhir_audit = _AuditNote(
        action, entity_type, entity_id, patient_id, request.query_string.decode()[:500] or None
    )


@bp.before_request
def _negotiate() -> None:
    """Refuse XML and oversized bodies before anything else runs."""
    wanted = request.args.get("_format")
    if wanted is not None and wanted.split(";")[0].strip() not in JSON_TYPES:
        raise _not_acceptable(wanted)
    accept = request.accept_mimetypes
    if wanted is None and accept and max(accept[FHIR_JSON], accept["application/json"]) == 0:
        raise _not_acceptable(accept.best or request.headers.get("Accept", ""))
    limit = int(current_app.config.get("MAX_CONTENT_LENGTH") or 0)
    if limit and request.content_length is not None and request.content_length > limit:
        message = f"The request body is {request.content_length} bytes; the limit is {limit}."
        raise PayloadTooLarge(
            message, code="FHIR_TOO_LARGE", extra={"issue": [_oo_issue("too-long", message)]}
        )
    if request.method in ("POST", "PUT", "PATCH") and request.content_length:
        ctype = (request.mimetype or "").lower()
        if ctype in XML_TYPES:
            message = "XML is not supported; send application/fhir+json."
            raise UnsupportedMediaType(
                message, code="FHIR_XML", extra={"issue": [_oo_issue("not-supported", message)]}
            )
        if ctype and ctype not in JSON_TYPES and ctype != "application/x-www-form-urlencoded":
            message = f"Content-Type {ctype} is not supported; send application/fhir+json."
            raise UnsupportedMediaType(
                message, code="FHIR_MEDIA_TYPE", extra={"issue": [_oo_issue("not-supported", message)]}
            )


@bp.before_request
def _take_write_lock() -> None:
    """Start a writing request's transaction with SQLite's write lock held.

    A deferred SQLite transaction that reads first and writes later fails at once with
    "database is locked" when another connection (the audit writer, another worker)
    writes in between; taking the lock first makes it wait its turn instead.
    """
    if request.method not in ("POST", "PUT", "DELETE"):
        return
    if request.path.endswith(("/_search", "/$validate", "/$everything")):
        return
    if request.method == "POST" and request.path.rstrip("/") == bp.url_prefix:
        # A Bundle takes the lock itself once its entries are validated (see ``bundle``).
        return
    _hold_write_lock()


def _hold_write_lock() -> None:
    """Take SQLite's write lock for the rest of the request (no-op on other databases)."""
    session = get_session()
    if session.get_bind().dialect.name != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return
        session.commit()
    begin_immediate(session)


@bp.before_request
def _read_outside_a_transaction() -> None:
    """Run a FHIR GET on PostgreSQL without BEGIN and COMMIT, each statement on its own.

    Under READ COMMITTED every statement takes a fresh snapshot even inside a transaction,
    so a read sees exactly what it would have seen; it saves two round trips and the
    commit's work on every read. Bulk export's kick-off is a GET that writes its job, and
    keeps its transaction.
    """
    if request.method != "GET" or request.path.endswith("/$export"):
        return
    session = get_session()
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@bp.after_request
def _record(response: Response) -> Response:
    """Audit the interaction with its outcome (denials included)."""
    note: _AuditNote | None = g.pop("fhir_audit", None)
    if note is not None:
        status = response.status_code
        outcome = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
        audit.record(
            note.action,
            note.entity_type,
            note.entity_id,
            patient_id=note.patient_id,
            outcome=outcome,
            detail=note.detail,
        )
    return response


def _not_acceptable(wanted: str) -> NotAcceptable:
    message = f"{wanted} is not available; this server speaks application/fhir+json only."
    return NotAcceptable(message, code="FHIR_FORMAT", extra={"issue": [_oo_issue("not-supported", message)]})


def _oo_issue(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {"severity": severity, "code": code, "diagnostics": diagnostics}


def _outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def _mimetype() -> str:
    wanted = request.args.get("_format", "")
    if wanted in ("application/json", "json"):
        return "application/json"
    if not wanted and request.accept_mimetypes.best == "application/json":
        return "application/json"
    return FHIR_JSON


def _respond(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(body, status=status, content_type=f"{_mimetype()}; charset=utf-8")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _json(value: Any, status: int = 200) -> Response:
    return _respond(json.dumps(value, ensure_ascii=False), status)


def _base() -> str:
    return request.host_url.rstrip("/") + (bp.url_prefix or "")


def _settings_flag(name: str, default: bool) -> bool:
    value = current_app.config.get(name)
    return default if value is None else bool(value)


def _check_references() -> bool:
    return _settings_flag("FHIR_REFERENTIAL_INTEGRITY", True)


def _principal(resource_type: str, access: str) -> Principal:
    """Return the caller, checked for a token and for a scope on this type."""
    principal = current_principal()
    if not principal.is_authenticated:
        raise Unauthorized("A bearer token is required.", code="FHIR_TOKEN_REQUIRED")
    if not principal.allows(resource_type, access):
        message = f"The token's scopes do not allow {access} on {resource_type}."
        raise Forbidden(
            message, code="INSUFFICIENT_SCOPE", extra={"issue": [_oo_issue("forbidden", message)]}
        )
    return principal


def _is_patient(principal: Principal) -> bool:
    return principal.role == "patient"


def _own_patients(principal: Principal) -> set[str]:
    from his.policy import linked_patient_ids

    return linked_patient_ids(principal)


def _sees_everything(principal: Principal) -> bool:
    return principal.kind == "client" and principal.site_id is None


def _audit_reader(principal: Principal) -> bool:
    """Tell whether the caller reads AuditEvents: an admin, or a system token."""
    return _sees_everything(principal) or principal.role == "admin"


def _guard_audit_events(principal: Principal, resource_type: str, access: str) -> bool:
    """Apply the AuditEvent rule; return True when the usual patient checks are skipped.

    AuditEvents are read by admins and system tokens only, and written only by system
    tokens (the audit trail is not something a user edits).
    """
    if resource_type != "AuditEvent":
        return False
    allowed = _sees_everything(principal) if access == "write" else _audit_reader(principal)
    if not allowed:
        message = "Only an administrator or a system token may read the audit trail."
        raise Forbidden(message, code="FHIR_AUDIT_ONLY", extra={"issue": [_oo_issue("forbidden", message)]})
    return True


def _ensure_access(principal: Principal, patients: set[str], action: str) -> None:
    """Raise Forbidden unless the caller may ``action`` every patient in ``patients``."""
    if _sees_everything(principal):
        return
    from his.policy import ensure_patient_access

    for patient_id in sorted(patients):
        ensure_patient_access(principal, patient_id, action)


def _check_readable(
    principal: Principal, stored: StoredResource, patients: set[str] | None = None
) -> set[str]:
    """Raise Forbidden unless the caller may read ``stored``; return its patients.

    ``patients``, when the caller already read them with the resource, saves a query.
    """
    if patients is None:
        patients = services.compartments_of(get_session(), stored.type, stored.id)
    if _is_patient(principal) and not patients:
        if stored.type not in DIRECTORY_TYPES:
            raise _forbidden_compartment()
        return patients
    if _is_patient(principal) and not patients & _own_patients(principal):
        raise _forbidden_compartment()
    if not _is_patient(principal):
        _ensure_access(principal, patients, "read")
    return patients


def _forbidden_compartment() -> Forbidden:
    message = "This resource is outside your patient compartment."
    return Forbidden(message, code="FHIR_COMPARTMENT", extra={"issue": [_oo_issue("forbidden", message)]})


def _check_writable(
    principal: Principal, resource_type: str, resource_id: str, *, new_patient: bool = False
) -> None:
    """Check after a write, before commit: the caller may write every patient it touched."""
    session = get_session()
    patients = services.compartments_of(session, resource_type, resource_id)
    if _is_patient(principal):
        if patients - _own_patients(principal) or (resource_type == "Patient" and new_patient):
            raise _forbidden_compartment()
        return
    if new_patient and resource_type == "Patient":
        _grant_site(principal, resource_id)
        return
    _ensure_access(principal, patients, "write")


def _grant_site(principal: Principal, patient_id: str) -> None:
    if principal.site_id is not None:
        from his.policy import grant_site_access

        grant_site_access(patient_id, principal.site_id)


def _visible_patients(principal: Principal) -> Select[Any] | None:
    """Return the ids of the patients a staff caller's site may see (None: no limit)."""
    if _sees_everything(principal) or _is_patient(principal):
        return None
    from his.models import PatientSiteAccess

    return select(PatientSiteAccess.patient_id).where(PatientSiteAccess.site_id == principal.site_id)


def _require_type(resource_type: str) -> None:
    if not is_resource_type(resource_type):
        message = f"Unknown resource type {resource_type!r}"
        raise NotFound(
            message, code="FHIR_UNKNOWN_TYPE", extra={"issue": [_oo_issue("not-supported", message)]}
        )


def _body() -> str:
    data = request.get_data(cache=True)
    if not data:
        raise BadRequest(
            "The request has no body.",
            code="FHIR_NO_BODY",
            extra={"issue": [_oo_issue("required", "The request has no body.")]},
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            "The body is not UTF-8.",
            code="FHIR_ENCODING",
            extra={"issue": [_oo_issue("structure", "The body is not UTF-8.")]},
        ) from exc


def _version_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": stored.etag, "Last-Modified": format_datetime(stored.last_updated, usegmt=True)}


def _write_response(stored: StoredResource, status: int) -> Response:
    headers = _version_headers(stored)
    location = f"{_base()}/{stored.type}/{stored.id}/_history/{stored.version_id}"
    headers["Location"] = location
    headers["Content-Location"] = location
    prefer = request.headers.get("Prefer", "")
    if "return=minimal" in prefer:
        response = Response(status=status, headers=headers)
        return response
    if "return=OperationOutcome" in prefer:
        verb = "created" if status == 201 else "updated"
        body = json.dumps(
            _outcome(
                [
                    _oo_issue(
                        "informational",
                        f"{stored.type}/{stored.id} {verb} (version {stored.version_id})",
                        "information",
                    )
                ]
            )
        )
        return _respond(body, status, headers)
    return _respond(stored.text or "", status, headers)


@bp.get("/metadata")
def metadata() -> Response:
    """Return the CapabilityStatement (no token needed)."""
    return _json(capability_statement(_base()))


@bp.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    """Read the current version; 304 when If-None-Match names it."""
    _note("read", resource_type, resource_id)
    principal = _principal(resource_type, "read")
    audit_view = _guard_audit_events(principal, resource_type, "read")
    stored, compartment = services.read_with_patients(get_session(), resource_type, resource_id)
    patients = set() if audit_view else _check_readable(principal, stored, compartment)
    g.fhir_audit.patient_id = min(patients) if patients else None
    match = request.headers.get("If-None-Match")
    if match is not None and match.strip().removeprefix("W/").strip('"') == str(stored.version_id):
        return Response(status=304, headers=_version_headers(stored))
    return _shaped(stored)


def _shaped(stored: StoredResource) -> Response:
    summary = request.args.get("_summary")
    elements = tuple(e for e in request.args.get("_elements", "").split(",") if e)
    return _respond(services.shape(stored, summary, elements), 200, _version_headers(stored))


def _patient_of(stored: StoredResource) -> str | None:
    if stored.type == "Patient":
        return stored.id
    patients = services.compartments_of(get_session(), stored.type, stored.id)
    return min(patients) if patients else None


@bp.get("/<resource_type>/<resource_id>/_history/<version_id>")
def vread(resource_type: str, resource_id: str, version_id: str) -> Response:
    """Read one version."""
    _note("vread", resource_type, resource_id)
    principal = _principal(resource_type, "read")
    stored = services.vread(get_session(), resource_type, resource_id, version_id)
    _check_readable(principal, stored)
    return _respond(stored.text or "", 200, _version_headers(stored))


@bp.post("/<resource_type>")
def create(resource_type: str) -> Response:
    """Create; conditional with If-None-Exist (or a query string)."""
    _note("create", resource_type)
    principal = _principal(resource_type, "write")
    _guard_audit_events(principal, resource_type, "write")
    body = _body()
    resource = jsontext.loads(body)
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise services._wrong_type(
            resource_type, resource.get("resourceType") if isinstance(resource, dict) else None
        )
    condition = request.headers.get("If-None-Exist") or (request.query_string.decode() or None)
    if condition:
        condition = "&".join(p for p in condition.split("&") if not p.startswith("_format="))
    session = get_session()
    stored = services.create(
        session, body, if_none_exist=condition or None, check_references=_check_references()
    )
    g.fhir_audit.entity_id = stored.id
    if stored.created:
        _check_writable(principal, stored.type, stored.id, new_patient=True)
    else:
        _check_readable(principal, stored)
    g.fhir_audit.patient_id = _patient_of(stored)
    return _write_response(stored, 201 if stored.created else 200)


def _check_may_change(principal: Principal, patients: set[str]) -> None:
    """Raise Forbidden unless the caller may write the patients a resource belongs to now."""
    if not patients or _sees_everything(principal):
        return
    if _is_patient(principal):
        if patients - _own_patients(principal):
            raise _forbidden_compartment()
    else:
        _ensure_access(principal, patients, "write")


@bp.put("/<resource_type>/<resource_id>")
def update(resource_type: str, resource_id: str) -> Response:
    """Update, or create under the client's id; If-Match makes it conditional on the version."""
    _note("update", resource_type, resource_id)
    principal = _principal(resource_type, "write")
    _guard_audit_events(principal, resource_type, "write")
    session = get_session()
    _check_may_change(principal, services.compartments_of(session, resource_type, resource_id))
    services.check_write_guards(session, resource_type, resource_id)
    stored = services.update(
        session,
        resource_type,
        resource_id,
        _body(),
        if_match=request.headers.get("If-Match"),
        check_references=_check_references(),
    )
    _check_writable(principal, resource_type, resource_id, new_patient=stored.created)
    g.fhir_audit.patient_id = _patient_of(stored)
    return _write_response(stored, 201 if stored.created else 200)


@bp.put("/<resource_type>")
def conditional_update(resource_type: str) -> Response:
    """Update the one resource the query matches, or create it."""
    _note("update", resource_type)
    principal = _principal(resource_type, "write")
    _guard_audit_events(principal, resource_type, "write")
    query = _condition_query()
    session = get_session()
    match = services._conditional_match(session, resource_type, query)
    if match is not None:
        _check_may_change(principal, services.compartments_of(session, resource_type, match.id))
        services.check_write_guards(session, resource_type, match.id)
    stored = services.conditional_update(
        session, resource_type, query, _body(), check_references=_check_references()
    )
    g.fhir_audit.entity_id = stored.id
    _check_writable(principal, resource_type, stored.id, new_patient=stored.created)
    return _write_response(stored, 201 if stored.created else 200)


def _condition_query() -> str:
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "_format"]
    if not pairs:
        raise BadRequest("A conditional request needs search parameters.", code="FHIR_CONDITION_EMPTY")
    return urlencode(pairs)


@bp.delete("/<resource_type>/<resource_id>")
def delete(resource_type: str, resource_id: str) -> Response:
    """Delete logically (a new, empty version); If-Match makes it conditional."""
    _note("delete", resource_type, resource_id)
    principal = _principal(resource_type, "write")
    _guard_audit_events(principal, resource_type, "write")
    session = get_session()
    _require_type(resource_type)
    patients = services.compartments_of(session, resource_type, resource_id)
    if _is_patient(principal) and (patients - _own_patients(principal) or not patients):
        raise _forbidden_compartment()
    if not _is_patient(principal):
        _ensure_access(principal, patients, "write")
    g.fhir_audit.patient_id = min(patients) if patients else None
    services.check_write_guards(session, resource_type, resource_id)
    deleted = services.delete_resource(
        session, resource_type, resource_id, if_match=request.headers.get("If-Match")
    )
    headers = {"ETag": deleted.etag} if deleted is not None else {}
    return Response(status=204, headers=headers)


@bp.delete("/<resource_type>")
def conditional_delete(resource_type: str) -> Response:
    """Delete the one resource the query matches (none is fine)."""
    _note("delete", resource_type)
    principal = _principal(resource_type, "write")
    _guard_audit_events(principal, resource_type, "write")
    session = get_session()
    query = _condition_query()
    match = services._conditional_match(session, resource_type, query)
    if match is None:
        return Response(status=204)
    patients = services.compartments_of(session, resource_type, match.id)
    if _is_patient(principal):
        if patients - _own_patients(principal) or not patients:
            raise _forbidden_compartment()
    else:
        _ensure_access(principal, patients, "write")
    services.check_write_guards(session, resource_type, match.id)
    services.delete_resource(session, resource_type, match.id)
    g.fhir_audit.entity_id = match.id
    return Response(status=204)


@bp.get("/<resource_type>")
def search(resource_type: str) -> Response:
    """Search by GET."""
    return _search(resource_type, list(request.args.items(multi=True)))


@bp.post("/<resource_type>/_search")
def search_post(resource_type: str) -> Response:
    """Search by POST with form-encoded parameters (and any in the URL)."""
    pairs = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _search(resource_type, pairs)


def _search(resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    _note("search", resource_type)
    principal = _principal(resource_type, "read")
    _require_type(resource_type)
    strict = "handling=strict" in request.headers.get("Prefer", "")
    session = get_session()
    compartment: str | None = None
    if _guard_audit_events(principal, resource_type, "read"):
        result = services.search(session, resource_type, pairs, strict=strict)
        return _respond(_searchset(result, f"{_base()}/{resource_type}"))
    if _is_patient(principal) and resource_type not in DIRECTORY_TYPES:
        own = _own_patients(principal)
        named = services.search_patients_named(pairs, resource_type)
        if named - own:
            raise _forbidden_compartment()
        if not own:
            raise _forbidden_compartment()
        compartment = next(iter(named)) if named else principal.patient_id or min(own)
        g.fhir_audit.patient_id = compartment
    else:
        named = services.search_patients_named(pairs, resource_type)
        _ensure_access(principal, named, "read")
        if len(named) == 1:
            g.fhir_audit.patient_id = next(iter(named))
    result = services.search(
        session,
        resource_type,
        pairs,
        strict=strict,
        compartment=compartment,
        visible_patients=_visible_patients(principal),
    )
    return _respond(_searchset(result, f"{_base()}/{resource_type}"))


def _link(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    return f"{url}?{urlencode(pairs)}" if pairs else url


def _searchset(result: SearchResult, url: str) -> str:
    """Assemble the searchset Bundle text around the stored resource texts."""
    params = [(k, v) for k, v in result.params if k != "_format"]

    def page(offset: int) -> str:
        return _link(
            url,
            [
                *params,
                ("_count", str(result.count)),
                ("_getpagesoffset", str(offset)),
                ("_snapshot", result.snapshot),
            ],
        )

    links = [{"relation": "self", "url": page(result.offset)}]
    if result.offset > 0:
        links.append({"relation": "first", "url": page(0)})
        links.append({"relation": "previous", "url": page(max(result.offset - result.count, 0))})
    if result.has_next:
        links.append({"relation": "next", "url": page(result.offset + result.count)})
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        head["total"] = result.total
    head["link"] = links
    entries: list[str] = []
    for stored, mode in [*((m, "match") for m in result.matches), *((i, "include") for i in result.included)]:
        text = services.shape(stored, result.summary, result.elements)
        entries.append(
            '{"fullUrl":'
            + jsontext.dumps(f"{_base()}/{stored.type}/{stored.id}")
            + ',"resource":'
            + text
            + ',"search":{"mode":"'
            + mode
            + '"}}'
        )
    if result.warnings:
        outcome = _outcome([_oo_issue("not-supported", w, "warning") for w in result.warnings])
        entries.append('{"resource":' + json.dumps(outcome) + ',"search":{"mode":"outcome"}}')
    body = json.dumps(head, ensure_ascii=False)
    if entries:
        body = body[:-1] + ',"entry":[' + ",".join(entries) + "]}"
    return body


@bp.get("/_history")
def history_system() -> Response:
    """History of every resource."""
    _note("history", "*")
    principal = current_principal()
    if not (
        _sees_everything(principal)
        or (
            principal.is_authenticated
            and principal.role == "admin"
            and principal.allows("AuditEvent", "read")
        )
    ):
        _principal("*", "read")
        if not _sees_everything(principal):
            raise Forbidden(
                "System history needs a system/*.read token.",
                code="FHIR_SYSTEM_ONLY",
                extra={"issue": [_oo_issue("forbidden", "System history needs a system/*.read token.")]},
            )
    return _history(None, None)


@bp.get("/<resource_type>/_history")
def history_type(resource_type: str) -> Response:
    """History of one type."""
    _note("history", resource_type)
    principal = _principal(resource_type, "read")
    if not _sees_everything(principal):
        message = "Type-level history needs a system/ token without a site."
        raise Forbidden(message, code="FHIR_SYSTEM_ONLY", extra={"issue": [_oo_issue("forbidden", message)]})
    return _history(resource_type, None)


@bp.get("/<resource_type>/<resource_id>/_history")
def history_instance(resource_type: str, resource_id: str) -> Response:
    """History of one resource."""
    _note("history", resource_type, resource_id)
    principal = _principal(resource_type, "read")
    _require_type(resource_type)
    patients = services.compartments_of(get_session(), resource_type, resource_id)
    if _is_patient(principal):
        if not patients & _own_patients(principal):
            raise _forbidden_compartment()
    else:
        _ensure_access(principal, patients, "read")
    return _history(resource_type, resource_id)


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(
            f"{name} must be a whole number.", code="FHIR_BAD_PARAM", fields={name: "not a number"}
        ) from exc
    if value < 0:
        raise BadRequest(f"{name} must not be negative.", code="FHIR_BAD_PARAM", fields={name: "negative"})
    return value


def _history(resource_type: str | None, resource_id: str | None) -> Response:
    count = min(_int_arg("_count", services.DEFAULT_COUNT), services.MAX_COUNT)
    offset = _int_arg("_getpagesoffset", 0)
    since = request.args.get("_since")
    versions, total = services.history(
        get_session(), resource_type, resource_id, since=since, count=count, offset=offset
    )
    url = _base() + "".join(f"/{p}" for p in (resource_type, resource_id) if p) + "/_history"
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_count", "_getpagesoffset")]
    links = [
        {
            "relation": "self",
            "url": _link(url, [*params, ("_count", str(count)), ("_getpagesoffset", str(offset))]),
        }
    ]
    if offset + count < total:
        links.append(
            {
                "relation": "next",
                "url": _link(
                    url, [*params, ("_count", str(count)), ("_getpagesoffset", str(offset + count))]
                ),
            }
        )
    if offset > 0:
        links.append(
            {
                "relation": "previous",
                "url": _link(
                    url, [*params, ("_count", str(count)), ("_getpagesoffset", str(max(offset - count, 0)))]
                ),
            }
        )
    entries = []
    for stored in versions:
        method = "DELETE" if stored.deleted else ("POST" if stored.method == "POST" else "PUT")
        request_url = f"{stored.type}/{stored.id}" if method != "POST" else stored.type
        status = (
            "201 Created"
            if stored.version_id == 1 and not stored.deleted
            else "204 No Content"
            if stored.deleted
            else "200 OK"
        )
        meta = {
            "request": {"method": method, "url": request_url},
            "response": {
                "status": status,
                "etag": stored.etag,
                "lastModified": services.instant(stored.last_updated),
            },
        }
        entry = '{"fullUrl":' + jsontext.dumps(f"{_base()}/{stored.type}/{stored.id}")
        if stored.text is not None:
            entry += ',"resource":' + stored.text
        entry += "," + json.dumps(meta)[1:]
        entries.append(entry)
    head = json.dumps({"resourceType": "Bundle", "type": "history", "total": total, "link": links})
    body = head[:-1] + (',"entry":[' + ",".join(entries) + "]}" if entries else "}")
    return _respond(body)


def _check_bundle_entry(principal: Principal, session: Any, index: int, entry: Any) -> str:
    """Check one entry's scopes (and, for deletes, its patients) before anything runs.

    Returns the entry's method. Searches and conditional deletes inside a Bundle are
    for system tokens only: their results could not be limited to what the caller sees.
    """
    request_part = entry.get("request") if isinstance(entry, dict) else None
    request_part = request_part if isinstance(request_part, dict) else {}
    method = str(request_part.get("method", "GET")).upper()
    method = "GET" if method == "HEAD" else method
    url = str(request_part.get("url", "")).lstrip("/")
    path = url.split("?")[0].split("/")
    rtype = path[0]
    access = "read" if method == "GET" else "write"

    def refuse(message: str) -> Forbidden:
        where = f"Bundle.entry[{index}]"
        return Forbidden(
            f"{where}: {message}",
            code="INSUFFICIENT_SCOPE",
            extra={"issue": [_oo_issue("forbidden", f"{where}: {message}") | {"expression": [where]}]},
        )

    if rtype and not principal.allows(rtype, access):
        raise refuse(f"the token's scopes do not allow {access} on {rtype}.")
    if rtype == "AuditEvent":
        _guard_audit_events(principal, rtype, access)
    has_id = len(path) > 1 and bool(path[1])
    if method in ("PUT", "DELETE") and has_id and is_resource_type(rtype):
        services.check_write_guards(session, rtype, path[1])
    if _sees_everything(principal):
        return method
    if method in ("GET", "DELETE") and not has_id:
        raise refuse("searches and conditional deletes inside a Bundle need a system token.")
    if method == "DELETE" and is_resource_type(rtype):
        patients = services.compartments_of(session, rtype, path[1])
        if _is_patient(principal):
            if not patients or patients - _own_patients(principal):
                raise _forbidden_compartment()
        else:
            _ensure_access(principal, patients, "write")
    return method


@bp.post("/")
@bp.post("")
def bundle() -> Response:
    """Process a batch or transaction Bundle."""
    _note("transaction", "Bundle")
    principal = current_principal()
    if not principal.is_authenticated:
        raise Unauthorized("A bearer token is required.", code="FHIR_TOKEN_REQUIRED")
    body = _body()
    parsed = jsontext.loads(body)
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Bundle":
        raise services._wrong_type("Bundle", parsed.get("resourceType") if isinstance(parsed, dict) else None)
    # Validating every resource is most of the work: do it before SQLite's write lock is
    # taken, so other writers are not held up and two workers validate side by side.
    prepared = services.prepare_bundle(parsed)
    _hold_write_lock()
    session = get_session()
    methods = [
        _check_bundle_entry(principal, session, index, entry)
        for index, entry in enumerate(parsed.get("entry") or [])
    ]
    result = services.transaction(session, prepared, check_references=_check_references())
    created_patients = {
        e.stored.id
        for e in result.entries
        if e.stored is not None and e.stored.type == "Patient" and e.stored.created
    }
    for patient_id in created_patients:
        if _is_patient(principal):
            raise _forbidden_compartment()
        _grant_site(principal, patient_id)
    if not _sees_everything(principal):
        for method, entry in zip(methods, result.entries, strict=True):
            stored = entry.stored
            if stored is None or (stored.type == "Patient" and stored.id in created_patients):
                continue
            patients = services.compartments_of(session, stored.type, stored.id) - created_patients
            if _is_patient(principal):
                if patients - _own_patients(principal) or (
                    method == "GET" and not patients and stored.type not in DIRECTORY_TYPES
                ):
                    raise _forbidden_compartment()
            else:
                _ensure_access(principal, patients, "read" if method == "GET" else "write")
    g.fhir_audit.detail = f"{result.type}: {len(result.entries)} entries"
    base = _base()
    minimal = "return=minimal" in request.headers.get("Prefer", "")
    entries: list[str] = []
    for entry in result.entries:
        response: dict[str, Any] = {"status": entry.status}
        parts = []
        if entry.stored is not None:
            response["location"] = entry.location
            response["etag"] = entry.stored.etag
            response["lastModified"] = services.instant(entry.stored.last_updated)
            parts.append('"fullUrl":' + jsontext.dumps(f"{base}/{entry.stored.type}/{entry.stored.id}"))
            if entry.stored.text is not None and not minimal:
                parts.append('"resource":' + entry.stored.text)
        elif entry.search is not None:
            parts.append('"resource":' + _searchset(entry.search, f"{base}/{entry.search.type}"))
        if entry.outcome is not None:
            response["outcome"] = entry.outcome
        parts.append('"response":' + json.dumps(response, ensure_ascii=False))
        entries.append("{" + ",".join(parts) + "}")
    body_text = '{"resourceType":"Bundle","type":"' + result.type + '","entry":[' + ",".join(entries) + "]}"
    return _respond(body_text)


@bp.route("/Patient/<patient_id>/$everything", methods=["GET", "POST"])
def everything(patient_id: str) -> Response:
    """Return everything about one patient, paged with _count, filtered with _since."""
    _note("everything", "Patient", patient_id, patient_id)
    principal = _principal("Patient", "read")
    if _is_patient(principal):
        if patient_id not in _own_patients(principal):
            raise _forbidden_compartment()
    else:
        _ensure_access(principal, {patient_id}, "read")
    count = _int_arg("_count", 0) or None
    offset = _int_arg("_getpagesoffset", 0)
    resources, total = services.everything(
        get_session(), patient_id, since=request.args.get("_since"), count=count, offset=offset
    )
    url = f"{_base()}/Patient/{patient_id}/$everything"
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_count", "_getpagesoffset")]
    links = [{"relation": "self", "url": _link(url, list(request.args.items(multi=True)))}]
    if count is not None and offset + count < total:
        links.append(
            {
                "relation": "next",
                "url": _link(
                    url, [*params, ("_count", str(count)), ("_getpagesoffset", str(offset + count))]
                ),
            }
        )
    if count is not None and offset > 0:
        links.append(
            {
                "relation": "previous",
                "url": _link(
                    url, [*params, ("_count", str(count)), ("_getpagesoffset", str(max(offset - count, 0)))]
                ),
            }
        )
    head = json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links})
    entries = [
        '{"fullUrl":'
        + jsontext.dumps(f"{_base()}/{r.type}/{r.id}")
        + ',"resource":'
        + (r.text or "{}")
        + ',"search":{"mode":"match"}}'
        for r in resources
    ]
    body = head[:-1] + (',"entry":[' + ",".join(entries) + "]}" if entries else "}")
    return _respond(body)


@bp.post("/<resource_type>/$validate")
@bp.post("/<resource_type>/<resource_id>/$validate")
def validate(resource_type: str, resource_id: str | None = None) -> Response:
    """Validate a resource (bare or in a Parameters ``resource``) without storing it."""
    _note("validate", resource_type, resource_id)
    _principal(resource_type, "read")
    _require_type(resource_type)
    parsed = jsontext.loads(_body())
    if (
        isinstance(parsed, dict)
        and parsed.get("resourceType") == "Parameters"
        and resource_type != "Parameters"
    ):
        found = next(
            (
                p.get("resource")
                for p in parsed.get("parameter") or []
                if isinstance(p, dict) and p.get("name") == "resource"
            ),
            None,
        )
        if found is None:
            raise BadRequest(
                "Parameters must carry a 'resource' parameter.", code="FHIR_VALIDATE_NO_RESOURCE"
            )
        parsed = found
    if not isinstance(parsed, dict):
        raise services._wrong_type(resource_type, None)
    issues = services.validate(parsed, resource_type)
    if resource_id is not None and not issues and parsed.get("id") not in (None, resource_id):
        issues = [
            _oo_issue("invalid", f"The body's id {parsed.get('id')!r} is not {resource_id!r}")
            | {"expression": [f"{resource_type}.id"]}
        ]
    if not issues:
        issues = [_oo_issue("informational", "The resource is valid.", "information")]
    return _json(_outcome(issues))


def _export_root() -> Path:
    return export.exports_root(current_app.extensions["vetinh.settings"].data_dir)


def _owner(principal: Principal) -> str:
    return f"{principal.kind}:{principal.client_id or principal.user_id}"


@bp.get("/$export")
@bp.get("/Patient/$export")
def export_kick_off() -> Response:
    """Accept a Bulk Data export (``Prefer: respond-async``) and answer 202 with its status URL."""
    level = "Patient" if request.path.endswith("/Patient/$export") else "system"
    _note("export", level)
    principal = _principal("Patient" if level == "Patient" else "*", "read")
    if not _sees_everything(principal):
        message = "Bulk export needs a system token that is not limited to a site."
        raise Forbidden(
            message, code="FHIR_EXPORT_FORBIDDEN", extra={"issue": [_oo_issue("forbidden", message)]}
        )
    if "respond-async" not in request.headers.get("Prefer", ""):
        message = "Bulk export is asynchronous: send 'Prefer: respond-async'."
        raise BadRequest(message, code="FHIR_EXPORT_SYNC", extra={"issue": [_oo_issue("invalid", message)]})
    output_format = request.args.get("_outputFormat")
    if output_format and output_format not in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        message = f"_outputFormat {output_format} is not supported; use application/fhir+ndjson."
        raise BadRequest(
            message, code="FHIR_EXPORT_FORMAT", extra={"issue": [_oo_issue("not-supported", message)]}
        )
    types = [t.strip() for t in request.args.get("_type", "").split(",") if t.strip()]
    for rtype in types:
        _require_type(rtype)
        if not principal.allows(rtype, "read"):
            raise Forbidden(f"The token's scopes do not allow read on {rtype}.", code="INSUFFICIENT_SCOPE")
    created = export.kick_off(
        _export_root(),
        request_url=request.url,
        level=level,
        types=types,
        since=request.args.get("_since"),
        owner=_owner(principal),
    )
    g.fhir_audit.entity_id = created.id
    return Response(status=202, headers={"Content-Location": f"{_base()}/$export-status/{created.id}"})


def _own_export(export_id: str) -> export.ExportRequest:
    principal = current_principal()
    if not principal.is_authenticated:
        raise Unauthorized("A bearer token is required.", code="FHIR_TOKEN_REQUIRED")
    found = export.load(_export_root(), export_id)
    if found.owner != _owner(principal):
        raise NotFound("No such export.", code="FHIR_EXPORT_NOT_FOUND")
    return found


@bp.get("/$export-status/<export_id>")
def export_status(export_id: str) -> Response:
    """Report an export: 202 while it runs, the manifest when complete."""
    found = _own_export(export_id)
    if found.state in ("accepted", "in-progress"):
        return Response(status=202, headers={"X-Progress": found.state, "Retry-After": "2"})
    if found.state == "failed":
        message = f"The export failed: {found.error}"
        return _json(_outcome([_oo_issue("exception", message)]), 500)
    response = Response(json.dumps(export.manifest(found)), status=200, mimetype="application/json")
    response.headers["Expires"] = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    return response


@bp.delete("/$export-status/<export_id>")
def export_cancel(export_id: str) -> Response:
    """Cancel an export and delete its files."""
    _note("export-cancel", "Bulk", export_id)
    _own_export(export_id)
    export.cancel(_export_root(), export_id)
    return Response(status=202)


@bp.get("/$export-file/<export_id>/<name>")
def export_file(export_id: str, name: str) -> Response:
    """Serve one NDJSON file of a completed export."""
    _note("export-download", "Bulk", export_id)
    found = _own_export(export_id)
    if found.state != "completed" or name not in {f"{o['type']}.ndjson" for o in found.output}:
        raise NotFound("No such export file.", code="FHIR_EXPORT_NOT_FOUND")
    path = _export_root() / export_id / name
    return Response(path.read_bytes(), mimetype="application/fhir+ndjson")
