"""Give pathology tests API clients for staff of either site."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from his.models import User
from tests.pathology.helpers import SlideClient


@pytest.fixture
def slides_as(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> Callable[..., SlideClient]:
    """Build a slide API client for a new user of a role and site."""

    def factory(role: str = "doctor", site: str = "DIST", scope: str = "user/*.*") -> SlideClient:
        user = make_user(role, site=site)
        return SlideClient(app.test_client(), make_token(user, scope))

    return factory


@pytest.fixture
def district(slides_as: Callable[..., SlideClient]) -> SlideClient:
    """A doctor of the district hospital, who scans and uploads slides."""
    return slides_as("doctor", "DIST")


@pytest.fixture
def central(slides_as: Callable[..., SlideClient]) -> SlideClient:
    """A pathologist of the central hospital, who reads consults."""
    return slides_as("pathologist", "CENT")
