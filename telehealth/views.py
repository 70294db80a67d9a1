"""HTTP entry points of the telehealth context."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("telehealth", __name__, template_folder="templates", static_folder="static/telehealth", static_url_path="/static/telehealth")
