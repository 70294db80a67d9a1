"""Describe the JSON API from the code: views declare their contract, the document is built from the URL map."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask

F = TypeVar("F", bound=Callable[..., Any])

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "example": "VALIDATION_FAILED"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    412: "Precondition failed",
    413: "Too large",
    422: "Validation failed",
    429: "Too many requests",
}


def api_doc(
    summary: str,
    *,
    tags: list[str] | None = None,
    request: dict[str, Any] | None = None,
    request_content_type: str = "application/json",
    responses: dict[int, dict[str, Any] | None] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    auth: bool = True,
) -> Callable[[F], F]:
    """Attach the OpenAPI description of an endpoint to its view function."""

    def decorator(view: F) -> F:
        view.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary,
            "tags": tags or [],
            "request": request,
            "request_content_type": request_content_type,
            "responses": responses or {200: None},
            "parameters": parameters or [],
            "auth": auth,
        }
        return view

    return decorator


_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>[a-zA-Z_]+)>")


def build_document(app: Flask, prefix: str = "/api/v1") -> dict[str, Any]:
    """Build the OpenAPI 3 document of every documented route under ``prefix``."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(prefix):
            continue
        view = app.view_functions[rule.endpoint]
        doc = getattr(view, "__openapi__", None)
        if doc is None:
            continue
        path = _CONVERTER.sub(lambda m: "{" + m.group("name") + "}", rule.rule)
        path_params = [
            {
                "name": m.group("name"),
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if m.group("conv") == "int" else "string"},
            }
            for m in _CONVERTER.finditer(rule.rule)
        ]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": doc["summary"],
                "tags": doc["tags"],
                "parameters": path_params + doc["parameters"],
                "responses": {},
            }
            if doc["auth"]:
                operation["security"] = [{"bearer": []}]
            if doc["request"] is not None and method in {"POST", "PUT", "PATCH"}:
                operation["requestBody"] = {
                    "required": True,
                    "content": {doc["request_content_type"]: {"schema": doc["request"]}},
                }
            for status, schema in doc["responses"].items():
                entry: dict[str, Any] = {"description": STATUS_TEXT.get(status, "Response")}
                if status >= 400:
                    entry["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }
                elif schema is not None:
                    entry["content"] = {"application/json": {"schema": schema}}
                operation["responses"][str(status)] = entry
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Vệ Tinh API",
            "version": "1",
            "description": "The JSON API of Vệ Tinh for mobile and partner apps. "
            "Errors are {code, message, fields}. FHIR R4 is served separately at /fhir/R4.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
