"""HTTP entry points of the booking context: the pages, and (in ``booking.api``) the JSON API."""

from __future__ import annotations

from booking import api as _api  # noqa: F401 - registers the API routes on the blueprint
from booking.blueprint import bp

__all__ = ["bp"]
