"""Serve the JSON API's own endpoints: tokens, the caller's identity, and the OpenAPI document."""

from __future__ import annotations

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
from his.errors import BadRequest, Unauthorized, UnsupportedMediaType
from his.openapi import api_doc, build_document
from his.security import current_principal, login_required

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
