"""A pooled PostgreSQL connection is checked only after resting, and a dead one is replaced."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

import his.db
from his.db import Database

# Both passes of `make test` run these against the PostgreSQL server: the tests need no tables,
# only server connections (SQLite has none to lose).
pytestmark = pytest.mark.postgres


@pytest.fixture
def server_url() -> str:
    base = os.environ.get("VETINH_TEST_DATABASE_URL", "")
    if not base:
        pytest.skip("VETINH_TEST_DATABASE_URL is not set: pool pinging needs a PostgreSQL server")
    return make_url(base).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


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
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(server_url, pool_size=1)
    pings = _count_pings(monkeypatch, database)
    try:
        for _ in range(5):
            with database.engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        database.dispose()
    assert pings == []


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(his.db, "IDLE_BEFORE_PING", 0.0)
    database = Database(server_url, pool_size=1)
    admin = Database(server_url, pool_size=1)
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
