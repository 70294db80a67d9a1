"""HTTP entry points of medical records, e-prescriptions and the pharmacy."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "records",
    __name__,
    template_folder="templates",
    static_folder="static/records",
    static_url_path="/static/records",
)
