"""Billing test data: a price list, patients cared for at the district site, their encounters."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.charges import record_charge
from billing.coverage import CardEntry, register_card
from billing.invoices import Facility, open_invoice
from billing.payments import sign
from billing.services import import_prices, read_price_csv
from fhir import services as store
from his.db import get_database
from his.models import Site
from his.patients import PatientDetails, create_patient

PRICE_LIST = """code,name,kind,unit,price,insurance_price,valid_from,valid_to,xml_group
KB01,Khám bệnh nội khoa,visit,lần,30500,,2024-01-01,,13
KB01,Khám bệnh nội khoa,visit,lần,50600,,2025-07-01,,13
SA01,Siêu âm ổ bụng,service,lần,250000,200000,2024-01-01,,2
XN01,Tổng phân tích tế bào máu,service,lần,46200,,2024-01-01,,1
TH01,Paracetamol 500mg,drug,viên,1234.5,,2024-01-01,,4
"""

VISIT_AT = datetime(2025, 9, 10, 2, 0, tzinfo=UTC)  # 09:00 in Hà Nội
SECRET = "test-webhook-secret-0123456789"
URL = "/api/v1/payments/notifications"


@pytest.fixture
def prices(app) -> None:
    with get_database(app).session_scope() as session:
        import_prices(session, read_price_csv(PRICE_LIST))


@pytest.fixture
def make_patient(app, sites: dict[str, Site]) -> Callable[..., str]:
    """Register a patient cared for at the district site; return the Patient id."""

    def factory(
        name: str = "Nguyễn Văn An", birth_date: date = date(1980, 5, 17), national_id: str | None = None
    ) -> str:
        with get_database(app).session_scope() as session:
            district = session.query(Site).filter_by(code="DIST").one()
            return create_patient(
                session,
                PatientDetails(full_name=name, birth_date=birth_date, sex="male", national_id=national_id),
                site_id=district.id,
            )

    return factory


@pytest.fixture
def make_encounter(app) -> Callable[..., str]:
    """Open an Encounter for a patient at a given moment; return its id."""

    def factory(patient_id: str, start: datetime = VISIT_AT) -> str:
        with get_database(app).session_scope() as session:
            return store.create(
                session,
                {
                    "resourceType": "Encounter",
                    "status": "arrived",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "period": {"start": start.isoformat().replace("+00:00", "Z")},
                },
            ).id

    return factory


@pytest.fixture
def patient(make_patient) -> str:
    return make_patient()


@pytest.fixture
def encounter(make_encounter, patient) -> str:
    return make_encounter(patient)


@pytest.fixture
def secret(app):
    app.config["VETINH_BANK_WEBHOOK_SECRET"] = SECRET


@pytest.fixture
def invoice(app, secret, prices, patient, encounter):
    """An invoice of 192.589 ₫ for the patient (DN card, 80%)."""
    app.config["VETINH_BANK_BIN"] = "970436"
    app.config["VETINH_BANK_ACCOUNT"] = "0011001234567"
    with get_database(app).session_scope() as session:
        register_card(
            session,
            patient,
            CardEntry("DN4010123456789", date(2025, 1, 1), date(2025, 12, 31), "01234"),
            visit_date=date(2025, 9, 10),
        )
        record_charge(session, patient, encounter, "KB01", 1, VISIT_AT, "checkin")
        record_charge(session, patient, encounter, "SA01", 2, VISIT_AT + timedelta(minutes=1), "s1")
        record_charge(session, patient, encounter, "TH01", 10, VISIT_AT + timedelta(minutes=2), "s2")
        invoice = open_invoice(session, encounter, Facility(code="01234"))
        assert invoice.amount_due == Decimal("192589")
        return invoice


def notice_body(transaction_id: str, amount: object, description: str) -> bytes:
    return json.dumps(
        {
            "transaction_id": transaction_id,
            "amount": amount,
            "description": description,
            "account": "0011001234567",
            "transacted_at": "2025-09-10T09:30:00+07:00",
        }
    ).encode()


def post_notice(client, body: bytes, signature: str | None = None):
    headers = {"Content-Type": "application/json", "X-Signature": signature or sign(body, SECRET)}
    return client.post(URL, data=body, headers=headers)
