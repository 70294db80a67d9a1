"""After payment: the e-invoice goes to the provider and the claim to the BHXH gateway, once, by jobs."""

from __future__ import annotations

import json

from sqlalchemy import select
from werkzeug.wrappers import Request, Response

from billing.models import ClaimSubmission, EInvoiceRecord
from billing.payments import record_desk_payment
from his import jobs
from his.db import get_database

from .fakes import serve


class Recorder:
    """A fake provider or gateway: answer 503 while ``down``, else accept and remember the body."""

    def __init__(self, answer: dict[str, str]) -> None:
        self.answer = answer
        self.down = False
        self.bodies: list[bytes] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        if self.down:
            return Response("down", status=503)(environ, start_response)
        self.bodies.append(request.get_data())
        return Response(json.dumps(self.answer), mimetype="application/json")(environ, start_response)


def _rows(app):
    with get_database(app).session_scope() as session:
        einvoices = [(r.status, r.attempts, r.lookup_code) for r in session.scalars(select(EInvoiceRecord))]
        claims = [(r.status, r.attempts, r.receipt) for r in session.scalars(select(ClaimSubmission))]
    return einvoices, claims


def test_a_paid_invoice_is_sent_once_to_the_provider_and_the_gateway(app, invoice):
    provider = Recorder({"lookup_code": "TRACUU1"})
    gateway = Recorder({"receipt": "BHXH-1"})
    with serve(provider) as provider_url, serve(gateway) as gateway_url:
        app.config.update(
            VETINH_EINVOICE_PROVIDER_URL=provider_url,
            VETINH_EINVOICE_SELLER_NAME="Bệnh viện huyện Demo",
            VETINH_EINVOICE_SELLER_TAX_CODE="0101234567",
            VETINH_BHYT_CLAIM_GATEWAY_URL=gateway_url,
        )
        with app.app_context(), get_database(app).session_scope() as session:
            record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
        assert _rows(app) == ([("pending", 0, None)], [("pending", 0, None)])

        provider.down = True
        assert jobs.run_now(app, "billing.send_einvoices")
        assert _rows(app)[0] == [("pending", 1, None)]

        provider.down = False
        for _ in range(2):  # a second run sends nothing again
            assert jobs.run_now(app, "billing.send_einvoices")
            assert jobs.run_now(app, "billing.submit_claims")
    assert _rows(app) == ([("sent", 1, "TRACUU1")], [("sent", 0, "BHXH-1")])
    assert len(provider.bodies) == 1
    assert len(gateway.bodies) == 1
    assert b"<KHHDon>C26TBV</KHHDon>" in provider.bodies[0]
    assert b"<TgTTTBSo>192589</TgTTTBSo>" in provider.bodies[0]
    assert b"<GIAMDINHHS>" in gateway.bodies[0]
    assert f"<MA_LK>{invoice.reference}".encode() not in gateway.bodies[0]  # the tables travel base64-encoded
