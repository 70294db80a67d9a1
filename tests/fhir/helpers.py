"""Help FHIR tests: a JSON-speaking client, system tokens and the data of tests/data/fhir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from his.accounts import create_client, issue_token
from his.db import get_database

DATA = Path(__file__).resolve().parent.parent / "data" / "fhir"
FHIR = "application/fhir+json"


class FhirClient:
    """Call /fhir/R4 with a bearer token and FHIR JSON."""

    def __init__(self, client: FlaskClient, token: str | None) -> None:
        self.client = client
        self.token = token

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = {"Accept": FHIR}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        out.update(headers or {})
        return out

    def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        return self.client.get("/fhir/R4/" + path.lstrip("/"), headers=self._headers(headers), **kwargs)

    def delete(self, path: str, headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.delete("/fhir/R4/" + path.lstrip("/"), headers=self._headers(headers))

    def send(self, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        all_headers = {"Content-Type": FHIR, **self._headers(headers)}
        return self.client.open("/fhir/R4/" + path.lstrip("/"), method=method, data=data, headers=all_headers)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        return self.send("POST", path, body, headers)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        return self.send("PUT", path, body, headers)


def system_token(app: Flask, scope: str = "system/*.*", site_code: str | None = None) -> str:
    """Register a system client (another hospital's system) and issue it a token."""
    with get_database(app).session_scope() as session:
        client, _secret = create_client(
            session,
            client_id=f"gateway-{scope}-{site_code}",
            name="Gateway",
            scope=scope,
            site_code=site_code,
        )
        token, _row = issue_token(session, client=client, scope=scope, ttl_seconds=3600)
    return token


def load(name: str) -> dict[str, Any]:
    """Read a JSON file from tests/data/fhir."""
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def patient_body(**changes: Any) -> dict[str, Any]:
    """Return a small valid Vietnamese Patient."""
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "http://fhir.ehealth.gov.vn/core/sid/national_id", "value": "001203004567"}
        ],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"], "text": "Nguyễn Thị Lan"}],
        "gender": "female",
        "birthDate": "1990-04-12",
        "telecom": [
            {"system": "phone", "value": "0912345678"},
            {"system": "email", "value": "lan@example.vn"},
        ],
    }
    body.update(changes)
    return body
