"""Serve the JSON API's own endpoints: tokens, the caller's identity, and the OpenAPI document."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from his import audit
from his.accounts import (
    authenticate,
    authenticate_client,
    default_scope,
    issue_token,
    narrow_scope,
    record_failed_login,
)
from his.db import get_database, get_session
from his.errors import BadRequest, Unauthorized, UnsupportedMediaType, ValidationFailed
from his.openapi import api_doc, build_document
from his.patients import PatientDetails, create_patient, patient_summary
from his.policy import ensure_patient_access
from his.security import current_principal, login_required, roles_required, scope_required

bp = Blueprint("api", __name__, url_prefix="/api/v1")

TOKEN_RESPONSE = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}


def json_body() -> dict[str, Any]:
    """Return the request's JSON object; raise a clear 4xx for anything else."""
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.", code="MALFORMED_JSON")
    return body


@bp.post("/auth/token")
@api_doc(
    "Exchange a username and password (or client credentials) for a bearer token",
    tags=["auth"],
    auth=False,
    request={
        "type": "object",
        "properties": {
            "username": {"type": "string"},
            "password": {"type": "string", "format": "password"},
            "scope": {"type": "string", "example": "patient/*.read"},
            "grant_type": {"type": "string", "enum": ["password", "client_credentials"]},
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
        },
    },
    responses={200: TOKEN_RESPONSE, 400: None, 401: None, 429: None},
)
def token() -> Response:
    """Issue a bearer token with SMART-style scopes."""
    body: dict[str, Any] = dict(request.form) if request.form else json_body()
    settings = current_app.extensions["vetinh.settings"]
    db = get_session()
    grant = body.get("grant_type") or "password"
    if grant == "client_credentials":
        client_id = str(body.get("client_id") or "")
        secret = str(body.get("client_secret") or "")
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            client_id, secret = auth.username or "", auth.password or ""
        client = authenticate_client(db, client_id, secret)
        scope = narrow_scope(body.get("scope"), client.scope)
        raw, row = issue_token(db, client=client, scope=scope, ttl_seconds=settings.token_ttl_seconds)
        audit.record("token", "Client", client.client_id)
    elif grant == "password":
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest(
                "Give a username and a password.",
                fields={"username": "required", "password": "required"},
            )
        try:
            user = authenticate(
                db,
                username,
                password,
                address=request.remote_addr,
                limit=settings.login_max_failures,
                window=settings.login_window_seconds,
            )
        except Unauthorized:
            with get_database().session_scope() as counter:
                record_failed_login(counter, username, request.remote_addr)
            audit.record("token", "User", None, outcome="failure", claimed_username=username[:80])
            raise
        scope = narrow_scope(body.get("scope"), default_scope(user.role))
        raw, row = issue_token(db, user=user, scope=scope, ttl_seconds=settings.token_ttl_seconds)
        audit.record("token", "User", str(user.id))
    else:
        raise BadRequest("Unsupported grant_type.", fields={"grant_type": "unsupported"})
    response = jsonify(
        access_token=raw,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=settings.token_ttl_seconds,
        scope=row.scope,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/me")
@login_required
@api_doc(
    "Describe the caller: user, role, site and scopes",
    tags=["auth"],
    responses={200: {"type": "object"}, 401: None},
)
def me() -> Response:
    """Return who the caller is."""
    principal = current_principal()
    return jsonify(
        kind=principal.kind,
        username=principal.username,
        full_name=principal.full_name,
        role=principal.role,
        site=principal.site_code,
        patient_id=principal.patient_id,
        scope=" ".join(sorted(principal.scopes)),
    )


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Return the OpenAPI 3 document generated from the routes."""
    return jsonify(build_document(current_app))


@bp.get("/docs")
def docs() -> str | BaseResponse:
    """Show the browsable API page."""
    return render_template("his/api_docs.html")


PATIENT_INPUT = {
    "type": "object",
    "required": ["full_name", "birth_date", "sex"],
    "properties": {
        "full_name": {"type": "string", "example": "Nguyễn Văn An"},
        "birth_date": {"type": "string", "format": "date"},
        "sex": {"type": "string", "enum": ["male", "female", "other", "unknown"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
        "national_id": {"type": "string", "description": "CCCD, 12 digits"},
        "address": {"type": "string"},
    },
}
PATIENT_OUTPUT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "full_name": {"type": "string"},
        "birth_date": {"type": "string", "format": "date"},
        "sex": {"type": "string"},
        "national_id": {"type": "string"},
        "phone": {"type": "string"},
        "fhir": {"type": "string", "description": "URL of the FHIR Patient"},
    },
}


def _parse_patient(body: dict[str, Any]) -> PatientDetails:
    raw_birth = body.get("birth_date")
    birth_date = None
    if raw_birth is not None:
        try:
            birth_date = date.fromisoformat(str(raw_birth))
        except ValueError:
            raise ValidationFailed(fields={"birth_date": "Use the format YYYY-MM-DD."}) from None
    return PatientDetails(
        full_name=str(body.get("full_name") or ""),
        birth_date=birth_date,
        sex=str(body.get("sex") or ""),
        phone=(str(body["phone"]) if body.get("phone") else None),
        email=(str(body["email"]) if body.get("email") else None),
        national_id=(str(body["national_id"]) if body.get("national_id") else None),
        address=(str(body["address"]) if body.get("address") else None),
    )


@bp.post("/patients")
@roles_required("receptionist", "nurse", "doctor")
@scope_required("Patient", "write")
@api_doc(
    "Register a patient (staff); the patient is cared for at the staff member's site",
    tags=["patients"],
    request=PATIENT_INPUT,
    responses={201: PATIENT_OUTPUT, 401: None, 403: None, 422: None},
)
def create_patient_endpoint() -> tuple[Response, int]:
    """Register a patient at the caller's site."""
    principal = current_principal()
    details = _parse_patient(json_body())
    patient_id = create_patient(get_session(), details, site_id=principal.site_id)
    audit.record("create", "Patient", patient_id, patient_id=patient_id)
    summary = patient_summary(get_session(), patient_id)
    return jsonify(summary), 201


@bp.get("/patients/<patient_id>")
@login_required
@scope_required("Patient", "read")
@api_doc(
    "Read a patient's identity (the patient themself, a linked parent, or staff of a caring site)",
    tags=["patients"],
    responses={200: PATIENT_OUTPUT, 401: None, 403: None, 404: None},
)
def read_patient_endpoint(patient_id: str) -> Response:
    """Return a patient's identity after the access check."""
    ensure_patient_access(current_principal(), patient_id, "read")
    summary = patient_summary(get_session(), patient_id)
    audit.record("read", "Patient", patient_id, patient_id=patient_id)
    return jsonify(summary)
