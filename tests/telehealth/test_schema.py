"""The telehealth migration builds exactly the tables the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask

from his.db import get_database
from his.models_registry import metadata


def test_the_migration_matches_the_models(app: Flask) -> None:
    with get_database(app).engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)

    assert [d for d in differences if "telehealth_" in repr(d)] == []
