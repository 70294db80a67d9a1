"""Background jobs of medical records: deliver signed prescriptions to the national system."""

from __future__ import annotations

import logging

from flask import Flask

from his.db import get_session
from his.jobs import register_job

log = logging.getLogger(__name__)


def send_national_prescriptions(app: Flask) -> None:
    """Post due outbox messages once (idempotent: a sent message is never sent again)."""
    from his.records.national import send_pending

    endpoint = app.config.get("VETINH_RECORDS_NATIONAL_URL") or app.config.get("RECORDS_NATIONAL_URL")
    if not endpoint:
        return
    results = send_pending(
        get_session(),
        str(endpoint),
        token=str(
            app.config.get("VETINH_RECORDS_NATIONAL_TOKEN") or app.config.get("RECORDS_NATIONAL_TOKEN") or ""
        ),
    )
    for result in results:
        if result.status != "sent":
            log.warning("national prescription %s: %s %s", result.message_id, result.status, result.detail)


register_job("records.send_national_prescriptions", send_national_prescriptions, "interval", minutes=1)
