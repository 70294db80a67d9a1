"""The national prescription outbox against a local fake of the national system."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from his.db import utcnow
from his.models import User
from his.records import services, signatures
from his.records.models import OutboxMessage
from his.records.national import backoff, errors_of, send_pending
from his.records.services import DraftLine, DraftPrescription

from .conftest import Visit, actor_of

REQUIRED = (
    "loai_don_thuoc",
    "ma_don_thuoc",
    "ho_ten_benh_nhan",
    "ngay_sinh_benh_nhan",
    "gioi_tinh",
    "chan_doan",
    "thong_tin_don_thuoc",
    "ngay_gio_ke_don",
    "signature",
)


class FakeNationalSystem:
    """A local HTTP server answering like the national prescription system."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.received: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.received.append(body)
                if fake.mode == "slow":
                    time.sleep(1.0)
                    return self._answer(200, {"ok": True})
                if fake.mode == "down":
                    return self._answer(503, {"message": "bảo trì"})
                errors = [
                    {"field": f, "message": "thiếu trường"} for f in REQUIRED if body.get(f) in (None, "", [])
                ]
                for index, drug in enumerate(body.get("thong_tin_don_thuoc", [])):
                    if not drug.get("ma_thuoc") or not drug.get("so_luong"):
                        errors.append({"field": f"thong_tin_don_thuoc[{index}]", "message": "thiếu mã thuốc"})
                if fake.mode == "reject":
                    errors.append({"field": "ma_dinh_danh_cong_dan", "message": "Sai mã định danh"})
                if errors:
                    return self._answer(422, {"errors": errors})
                return self._answer(200, {"ma_don_thuoc": body["ma_don_thuoc"], "trang_thai": "đã nhận"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/don-thuoc"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def national() -> Iterator[FakeNationalSystem]:
    fake = FakeNationalSystem()
    yield fake
    fake.close()


@pytest.fixture
def signed(
    session: Session, make_visit: Callable[..., Visit], make_user: Callable[..., User]
) -> OutboxMessage:
    doctor = make_user("doctor", full_name="Lê Văn Minh")
    visit = make_visit(name="Đỗ Thị Hạnh", sex="female")
    services.add_diagnosis(session, visit.encounter_id, "J02.9", actor_of(doctor))
    services.save_prescription(
        session,
        visit.encounter_id,
        DraftPrescription(
            (
                DraftLine("VTS0020", "sáng 1 viên, chiều 1 viên, tối 1 viên"),
                DraftLine("VTS0001", "sáng 1 viên, tối 1 viên", "Khi sốt"),
            ),
            5,
            advice="Uống nhiều nước",
            follow_up=date.today() + timedelta(days=5),
        ),
        actor_of(doctor),
        on=date.today(),
    )
    signatures.sign_encounter(
        session, visit.encounter_id, actor_of(doctor), overrides={}, secret="s" * 40, on=date.today()
    )
    session.commit()
    return session.scalars(select(OutboxMessage)).one()


def _signing_queues_the_payload_and_the_job_sends_it_once(
    app: Flask, session: Session, signed: OutboxMessage, national: FakeNationalSystem
) -> None:
    payload = signed.payload
    assert payload["loai_don_thuoc"] == "C"
    assert payload["ma_don_thuoc"].endswith("-C")
    assert payload["ho_ten_benh_nhan"] == "Đỗ Thị Hạnh"
    assert payload["gioi_tinh"] == 2
    assert payload["ngay_sinh_benh_nhan"] == "14/03/1975"
    assert payload["chan_doan"] == [{"ma_chan_doan": "J02.9", "ten_chan_doan": "Viêm họng cấp"}]
    drugs = payload["thong_tin_don_thuoc"]
    assert [(d["ma_thuoc"], d["so_luong"], d["don_vi_tinh"]) for d in drugs] == [
        ("VTS0020", 15, "viên"),
        ("VTS0001", 10, "viên"),
    ]
    assert drugs[1]["cach_dung"] == "sáng 1 viên, tối 1 viên Khi sốt"
    assert payload["loi_dan"] == "Uống nhiều nước"
    assert payload["ngay_tai_kham"]
    assert len(payload["ngay_gio_ke_don"]) == 19
    assert payload["signature"]
    assert signed.status == "pending"
    from his import jobs

    app.config["RECORDS_NATIONAL_URL"] = national.url
    jobs.run_now(app, "records.send_national_prescriptions")
    jobs.run_now(app, "records.send_national_prescriptions")
    assert [body["ma_don_thuoc"] for body in national.received] == [payload["ma_don_thuoc"]]
    session.commit()
    session.expire_all()
    sent = session.get(OutboxMessage, signed.id)
    assert sent.status == "sent"
    assert sent.response["trang_thai"] == "đã nhận"


def _a_422_keeps_the_error_list_and_is_not_retried(
    session: Session, signed: OutboxMessage, national: FakeNationalSystem
) -> None:
    national.mode = "reject"
    (result,) = send_pending(session, national.url)
    assert result.status == "rejected"
    message = session.get(OutboxMessage, signed.id)
    assert errors_of(message) == ["ma_dinh_danh_cong_dan: Sai mã định danh"]
    assert send_pending(session, national.url, now=utcnow() + timedelta(days=1)) == []


def _timeouts_and_outages_are_retried_with_backoff(
    session: Session, signed: OutboxMessage, national: FakeNationalSystem
) -> None:
    national.mode = "slow"
    (first,) = send_pending(session, national.url, timeout=0.2)
    assert first.status == "retry"
    assert "Timeout" in first.detail
    message = session.get(OutboxMessage, signed.id)
    assert message.attempts == 1
    assert send_pending(session, national.url, timeout=0.2) == []  # not due yet
    national.mode = "down"
    later = utcnow() + backoff(1) + timedelta(seconds=1)
    (second,) = send_pending(session, national.url, now=later)
    assert second.status == "retry"
    assert second.detail == "HTTP 503"
    national.mode = "ok"
    (third,) = send_pending(session, national.url, now=later + backoff(2) + timedelta(seconds=1))
    assert third.status == "sent"
    assert session.get(OutboxMessage, signed.id).attempts == 3


def _queue_again(session: Session, message: OutboxMessage) -> None:
    """Put the message back as new, as if another prescription had just been signed."""
    session.expire_all()
    fresh = session.get(OutboxMessage, message.id)
    assert fresh is not None
    fresh.status, fresh.attempts, fresh.next_attempt_at, fresh.response = "pending", 0, utcnow(), None
    session.commit()


def test_the_outbox_against_the_fake_national_system(
    app: Flask, session: Session, signed: OutboxMessage, national: FakeNationalSystem
) -> None:
    """Sent once, 422 with its errors kept, timeouts and outages retried (one app for the lot)."""
    _signing_queues_the_payload_and_the_job_sends_it_once(app, session, signed, national)
    _queue_again(session, signed)
    _a_422_keeps_the_error_list_and_is_not_retried(session, signed, national)
    _queue_again(session, signed)
    _timeouts_and_outages_are_retried_with_backoff(session, signed, national)
