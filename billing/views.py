"""HTTP entry points of the billing context."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "billing",
    __name__,
    template_folder="templates",
    static_folder="static/billing",
    static_url_path="/static/billing",
)
