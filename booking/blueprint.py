"""Create the booking context's one blueprint, shared by its pages and its API routes."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "booking",
    __name__,
    template_folder="templates",
    static_folder="static/booking",
    static_url_path="/static/booking",
)
