"""Reminders through the outbox, against a real local SMTP server and a local webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import time, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from booking.models import Booking, Notification
from his import jobs
from his.db import get_database
from tests.booking.helpers import bearer, local_today

BAD_ADDRESS = "khong-ton-tai@example.vn"
BAD_PHONE = "0900000000"


class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and refuses one address."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == BAD_ADDRESS:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    handler = Mailbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def webhook() -> Iterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["to"] == BAD_PHONE:
                self.send_response(500)
            else:
                received.append(body)
                self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_port}/zalo"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings_overrides(settings_overrides, mailbox, webhook):
    _handler, port = mailbox
    _received, url = webhook
    return {
        **settings_overrides,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "extra": {"booking_webhook_url": url},
    }


def test_evening_reminders_are_delivered_once_and_a_bad_address_is_recorded(
    client, app, clinic, make_session, make_patient, make_user, make_token, mailbox, webhook
):
    handler, _port = mailbox
    received, _url = webhook
    session_id = make_session(
        clinic.id, day=local_today() + timedelta(days=1), starts=time(7, 30), ends=time(11, 30)
    )
    desk = make_token(make_user("receptionist"), "user/*.*")
    people = [
        ("an@example.vn", "0911000001"),
        (BAD_ADDRESS, BAD_PHONE),
        ("binh@example.vn", "0911000003"),
    ]
    for email, phone in people:
        patient_id = make_patient(email=email, phone=phone)
        response = client.post(
            "/api/v1/bookings",
            json={"session_id": session_id, "patient_id": patient_id},
            headers=bearer(desk),
        )
        assert response.status_code == 201

    assert jobs.run_now(app, "booking.evening_reminders")
    reminders = [m for m in handler.messages if "tomorrow" in m["Subject"] or "ngày mai" in m["Subject"]]
    assert sorted(m["To"] for m in reminders) == ["an@example.vn", "binh@example.vn"]
    assert sorted(body["to"] for body in received if body["kind"] == "eve") == ["0911000001", "0911000003"]
    to_an = next(m for m in reminders if m["To"] == "an@example.vn")
    assert "Phòng khám 3" in to_an.get_content()
    assert " 1 " in to_an.get_content() or " 1." in to_an.get_content()

    with get_database(app).session_scope() as session:
        outbox = session.scalars(select(Notification).where(Notification.kind == "eve")).all()
        by_recipient = {n.recipient: n for n in outbox}
        assert by_recipient[BAD_ADDRESS].status == "failed"
        assert "550" in (by_recipient[BAD_ADDRESS].last_error or "")
        assert by_recipient[BAD_PHONE].status in ("pending", "failed")
        assert {by_recipient[r].status for r in ("an@example.vn", "binh@example.vn", "0911000001")} == {
            "sent"
        }

    # Running it again sends nothing twice.
    mails, posts = len(handler.messages), len(received)
    assert jobs.run_now(app, "booking.evening_reminders")
    assert len(handler.messages) == mails
    assert len(received) == posts


def test_confirmation_mail_is_sent_by_the_outbox(
    client, app, clinic, make_session, make_patient, make_user, make_token, mailbox
):
    handler, _port = mailbox
    session_id = make_session(clinic.id)
    desk = make_token(make_user("receptionist"), "user/*.*")
    patient_id = make_patient(email="mo@example.vn")
    booking = client.post(
        "/api/v1/bookings", json={"session_id": session_id, "patient_id": patient_id}, headers=bearer(desk)
    ).get_json()
    assert jobs.run_now(app, "booking.deliver_notifications")
    assert jobs.run_now(app, "booking.deliver_notifications")
    assert [m["To"] for m in handler.messages] == ["mo@example.vn"]
    assert f"{booking['queue_number']}" in handler.messages[0]["Subject"]
    with get_database(app).session_scope() as session:
        assert session.scalar(select(Booking.status)) == "booked"


def test_a_reminder_goes_out_about_half_an_hour_before_the_call(
    client, app, clinic, make_session, make_patient, make_user, make_token, mailbox
):
    handler, _port = mailbox
    session_id = make_session(clinic.id, online=20, minutes=20)
    desk = make_token(make_user("receptionist"), "user/*.*")
    for email in ("dau@example.vn", "hai@example.vn", "ba@example.vn"):
        patient_id = make_patient(email=email)
        client.post(
            "/api/v1/bookings",
            json={"session_id": session_id, "patient_id": patient_id},
            headers=bearer(desk),
        )
    assert jobs.run_now(app, "booking.soon_reminders")
    assert jobs.run_now(app, "booking.soon_reminders")
    soon = sorted(m["To"] for m in handler.messages if "soon" in m["Subject"] or "Sắp" in m["Subject"])
    # 20 minutes a patient: the first two are due within half an hour, the third is not yet.
    assert soon == ["dau@example.vn", "hai@example.vn"]
