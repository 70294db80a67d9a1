"""Create the Flask extensions unbound; the app factory binds them."""

from __future__ import annotations

from flask import Flask, request
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()


def init_app(app: Flask) -> None:
    """Bind the extensions; CSRF guards every form post, bearer-token APIs are exempt."""
    csrf.init_app(app)

    @app.before_request
    def _csrf_for_pages() -> None:
        # API and FHIR calls authenticate with bearer tokens, which a browser never sends
        # by itself, so CSRF does not apply to them; every other unsafe request needs it.
        if request.method in {"GET", "HEAD", "OPTIONS", "TRACE"}:
            return
        if request.routing_exception is not None:
            return  # no view will run: the 404 or 405 is the answer
        if request.path.startswith(("/api/", "/fhir/")) and "vetinh_session" not in request.cookies:
            return
        if request.path.startswith(("/api/", "/fhir/")) and request.headers.get("Authorization"):
            return
        csrf.protect()
