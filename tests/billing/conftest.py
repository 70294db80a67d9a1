"""Billing test data: a price list, patients cared for at the district site, their encounters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest

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
