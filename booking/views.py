"""HTTP entry points of the booking context."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("booking", __name__, template_folder="templates", static_folder="static/booking", static_url_path="/static/booking")
