"""A pooled PostgreSQL connection is checked only after resting, and a dead one is replaced."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

import his.db
from his.db import Database
from tests import conftest


@pytest.fixture
def postgres(test_database: conftest.TestDatabase) -> conftest.TestDatabase:
    if not test_database.url.startswith("postgresql"):
        pytest.skip("pool pinging is a PostgreSQL matter: SQLite has no server connection to lose")
    return test_database


def _count_pings(monkeypatch: pytest.MonkeyPatch, database: Database) -> list[int]:
    pings: list[int] = []
    dialect = database.engine.dialect
    real = dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counting)
    return pings


def test_a_connection_handed_back_moments_ago_is_not_pinged(
    postgres: conftest.TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(postgres.url, pool_size=1)
    pings = _count_pings(monkeypatch, database)
    try:
        for _ in range(5):
            with database.engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        database.dispose()
    assert pings == []


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    postgres: conftest.TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(his.db, "IDLE_BEFORE_PING", 0.0)
    database = Database(postgres.url, pool_size=1)
    admin = Database(postgres.url, pool_size=1)
    pings = _count_pings(monkeypatch, database)
    try:
        with database.engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # The server ends the pooled connection (a restart, an idle timeout) while it rests.
        with admin.engine.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": first}).scalar_one()
        with database.engine.connect() as conn:
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    finally:
        database.dispose()
        admin.dispose()
    assert pings, "the rested connection was not checked"
    assert second != first
