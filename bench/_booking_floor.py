"""The floor the booking rush is measured against: a booking server that only writes.

``bench/booking_rush.py --floor`` serves this under the same gunicorn, with the same clients,
after the real rush. It answers ``POST /api/v1/bookings`` as the product does, with the same
framework (Flask), database layer (SQLAlchemy Core on psycopg) and writes: the counter UPDATE
that takes the number, the booking row, the Appointment and its history row, one commit.
It leaves out everything else a booking must do: no token or role, no access check for the
patient, no idempotency or "already booked" lookup, no check that the patient exists or that
the window is open, no FHIR validation, no search-index rows, no audit, no events. Nothing
may use it but the benchmark: it trusts whoever calls it.

What the rush reaches as a share of what this reaches is the cost of those checks and rows on
this machine.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import text

from booking import fhir_mapping
from booking.services import BookingRequest
from fhir.services import new_id
from his.db import make_engine, utcnow

TAKE_NUMBER = text(
    "UPDATE booking_counters AS c SET online_issued = c.online_issued + 1 "
    "FROM booking_sessions AS s WHERE c.session_id = :session_id AND s.id = c.session_id "
    "AND c.online_issued < s.online_capacity "
    "RETURNING s.online_first + (c.online_issued - 1) * s.online_step, s.starts_at, s.minutes_per_patient"
)
INSERT_BOOKING = text(
    "INSERT INTO booking_bookings (session_id, patient_id, channel, queue_number, status, sort_key, "
    "skip_count, idempotency_owner, idempotency_key, request_fingerprint, estimated_call_at, "
    "appointment_id, created_at) VALUES (:session_id, :patient_id, 'online', :number, 'booked', "
    ":number * 1000, 0, 'floor', :key, :fingerprint, :starts_at, :appointment_id, :now) RETURNING id"
)
INSERT_APPOINTMENT = text(
    "WITH history AS (INSERT INTO fhir_resource_history "
    "(res_type, res_id, version, last_updated, method, deleted, content) "
    "VALUES ('Appointment', :id, 1, :now, 'POST', false, :content)) "
    "INSERT INTO fhir_resource (res_type, res_id, version, created, last_updated, deleted, content) "
    "VALUES ('Appointment', :id, 1, :now, :now, false, :content)"
)


def create_app() -> Flask:
    """Build the floor server on ``VETINH_DATABASE_URL``."""
    engine = make_engine(os.environ["VETINH_DATABASE_URL"])
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Any:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return jsonify({"status": "ok"})

    @app.post("/api/v1/bookings")
    def book() -> Any:
        body = request.get_json()
        session_id, patient_id = int(body["session_id"]), str(body["patient_id"])
        now, appointment_id = utcnow(), new_id()
        with engine.begin() as connection:
            taken = connection.execute(TAKE_NUMBER, {"session_id": session_id}).first()
            if taken is None:
                return jsonify({"code": "SESSION_FULL"}), 409
            number, starts_at, minutes = taken
            booking_id = connection.execute(
                INSERT_BOOKING,
                {
                    "session_id": session_id,
                    "patient_id": patient_id,
                    "number": number,
                    "key": request.headers.get("Idempotency-Key"),
                    "fingerprint": BookingRequest(session_id, patient_id, booked_by=None).fingerprint(),
                    "starts_at": starts_at,
                    "appointment_id": appointment_id,
                    "now": now,
                },
            ).scalar_one()
            resource = fhir_mapping.appointment(
                booking_id=booking_id,
                queue_number=number,
                status="booked",
                patient_id=patient_id,
                slot_id=None,
                location_id=None,
                clinic_name="",
                estimated_call_at=starts_at,
                minutes_per_patient=minutes,
                created_at=now,
                channel="online",
            )
            content = json.dumps({"id": appointment_id, **resource}, ensure_ascii=False)
            connection.execute(INSERT_APPOINTMENT, {"id": appointment_id, "now": now, "content": content})
        return jsonify({"id": booking_id, "queue_number": number, "session": {"id": session_id}}), 201

    return app
