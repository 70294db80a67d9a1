"""Give FHIR tests clients holding tokens: a system client, or a user of any role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from his.models import User
from tests.fhir.helpers import FhirClient, system_token


@pytest.fixture
def fhir(app: Flask, client: FlaskClient) -> FhirClient:
    """Give a FHIR client holding a system/*.* token (sees every patient)."""
    return FhirClient(client, system_token(app))


@pytest.fixture
def fhir_as(
    app: Flask, client: FlaskClient, make_user: Callable[..., User], make_token: Callable[..., str]
) -> Callable[..., FhirClient]:
    """Build FHIR clients for a user of a role, with the given scopes."""

    def factory(role: str = "doctor", scope: str = "user/*.*", **extra: Any) -> FhirClient:
        user = make_user(role, **extra)
        return FhirClient(app.test_client(), make_token(user, scope))

    return factory
