"""HTTP entry points of the pathology context."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("pathology", __name__, template_folder="templates", static_folder="static", static_url_path="/static/pathology")
