"""Test that the fhir migrations build exactly the tables fhir.models declares."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from his.models_registry import metadata


def test_migrated_fhir_tables_match_the_models(test_database: Any) -> None:
    engine = create_engine(test_database.url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = [d for d in compare_metadata(context, metadata) if "fhir_" in repr(d)]
    finally:
        engine.dispose()
    assert differences == []
