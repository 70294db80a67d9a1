"""Define the one exception tree that every context raises.

    VetinhError                  500 INTERNAL
    ├── ConfigurationError       500 CONFIGURATION
    ├── BadRequest               400 BAD_REQUEST
    │   └── ValidationFailed     422 VALIDATION_FAILED   (carries ``fields``)
    ├── Unauthorized             401 UNAUTHORIZED
    ├── Forbidden                403 FORBIDDEN
    ├── NotFound                 404 NOT_FOUND
    ├── MethodNotAllowed         405 METHOD_NOT_ALLOWED
    ├── NotAcceptable            406 NOT_ACCEPTABLE
    ├── Conflict                 409 CONFLICT
    ├── Gone                     410 GONE
    ├── PreconditionFailed       412 PRECONDITION_FAILED
    ├── PayloadTooLarge          413 PAYLOAD_TOO_LARGE
    ├── UnsupportedMediaType     415 UNSUPPORTED_MEDIA_TYPE
    └── TooManyRequests          429 TOO_MANY_REQUESTS

A context subclasses the branch whose status fits and gives the error its own
stable ``code`` (``SESSION_FULL``); the app-level handler in ``his.errorhandlers``
renders it as HTML, JSON or a FHIR OperationOutcome depending on the URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class VetinhError(Exception):
    """Carry an HTTP status, a stable code, a message and optional per-field details."""

    status: int = 500
    code: str = "INTERNAL"
    message: str = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        fields: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.message = message or self.message
        if code:
            self.code = code
        self.fields: dict[str, str] = dict(fields or {})
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "fields": self.fields}
        body.update(self.extra)
        return body


class ConfigurationError(VetinhError):
    code = "CONFIGURATION"
    message = "The application is not configured correctly"


class BadRequest(VetinhError):
    status = 400
    code = "BAD_REQUEST"
    message = "The request is not valid"


class ValidationFailed(BadRequest):
    status = 422
    code = "VALIDATION_FAILED"
    message = "Some fields are not valid"


class Unauthorized(VetinhError):
    status = 401
    code = "UNAUTHORIZED"
    message = "Authentication is required"


class Forbidden(VetinhError):
    status = 403
    code = "FORBIDDEN"
    message = "You are not allowed to do this"


class NotFound(VetinhError):
    status = 404
    code = "NOT_FOUND"
    message = "Not found"


class MethodNotAllowed(VetinhError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    message = "This method is not allowed here"


class NotAcceptable(VetinhError):
    status = 406
    code = "NOT_ACCEPTABLE"
    message = "The requested format is not available"


class Conflict(VetinhError):
    status = 409
    code = "CONFLICT"
    message = "The request conflicts with the current state"


class Gone(VetinhError):
    status = 410
    code = "GONE"
    message = "The resource was deleted"


class PreconditionFailed(VetinhError):
    status = 412
    code = "PRECONDITION_FAILED"
    message = "A precondition of the request failed"


class PayloadTooLarge(VetinhError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    message = "The request body is too large"


class UnsupportedMediaType(VetinhError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "The request body's media type is not supported"


class TooManyRequests(VetinhError):
    status = 429
    code = "TOO_MANY_REQUESTS"
    message = "Too many requests; try again later"


def N_(message: str) -> str:
    """Mark a message for translation where it is defined; it is translated where it is shown."""
    return message
