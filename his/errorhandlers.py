"""Render every error in the format of where it happened: HTML, API JSON or FHIR OperationOutcome."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from his.errors import (
    N_,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    VetinhError,
)

log = logging.getLogger(__name__)

FHIR_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}

_WERKZEUG_TO_OURS: dict[int, type[VetinhError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def operation_outcome(error: VetinhError) -> dict[str, Any]:
    """Turn an error into a FHIR OperationOutcome."""
    issues = error.extra.get("issue")
    if not issues:
        code = FHIR_ISSUE_CODES.get(error.status, "exception")
        if error.fields:
            issues = [
                {
                    "severity": "error",
                    "code": code,
                    "diagnostics": f"{error.message} {message}".strip(),
                    "expression": [name],
                }
                for name, message in error.fields.items()
            ]
        else:
            issues = [{"severity": "error", "code": code, "diagnostics": error.message}]
    return {"resourceType": "OperationOutcome", "issue": issues}


def render_error(error: VetinhError) -> Response:
    """Build the response for a domain error according to the request's URL."""
    _rollback()
    path = request.path
    if path.startswith("/fhir/"):
        response = jsonify(operation_outcome(error))
        response.mimetype = "application/fhir+json"
    elif path.startswith("/api/") or path == "/api":
        body = error.to_dict()
        body.pop("issue", None)
        response = jsonify(body)
    else:
        response = Response(render_template("his/error.html", error=error), mimetype="text/html")
    response.status_code = error.status
    if error.status == 401 and path.startswith(("/api/", "/fhir/")):
        response.headers["WWW-Authenticate"] = 'Bearer realm="vetinh"'
    if error.status == 405 and "allowed" in error.extra:
        response.headers["Allow"] = ", ".join(error.extra["allowed"])
    return response


def _rollback() -> None:
    session = g.get("_vetinh_session")
    if session is not None:
        session.rollback()


def init_app(app: Flask) -> None:
    """Register the one app-level handler for our errors, HTTP errors and crashes."""

    @app.errorhandler(VetinhError)
    def _domain(error: VetinhError) -> Response:
        if error.status >= 500:
            log.error("Server error: %s", error.message)
        return render_error(error)

    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Response:
        return render_error(
            BadRequest(
                N_("The form expired or did not come from this site. Reload the page and try again."),
                code="CSRF_FAILED",
            )
        )

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        kind = _WERKZEUG_TO_OURS.get(status)
        if kind is not None:
            ours = kind()
        else:
            ours = VetinhError(error.description or "Error")
            ours.status = status
            ours.code = (error.name or "ERROR").upper().replace(" ", "_")
        if status == 404:
            ours.message = N_("Nothing is found at this address.")
            ours.extra["path"] = request.path
        if status == 405:
            allowed = getattr(error, "valid_methods", None) or []
            ours.message = N_("This address does not accept this kind of request.")
            ours.extra["method"] = request.method
            ours.extra["allowed"] = sorted(allowed)
        return render_error(ours)

    @app.errorhandler(Exception)
    def _crash(error: Exception) -> Response:
        log.exception("Unhandled error on %s %s", request.method, request.path)
        return render_error(VetinhError(N_("An unexpected error occurred. It has been logged.")))
