"""Import every context's models so that Alembic and tests see the whole schema."""

from __future__ import annotations

import importlib

from his.db import Base

MODEL_MODULES = (
    "his.models",
    "his.jobmodels",
    "his.records.models",
    "fhir.models",
    "booking.models",
    "billing.models",
    "telehealth.models",
    "pathology.models",
)

for _name in MODEL_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:
        if exc.name != _name:
            raise

metadata = Base.metadata
