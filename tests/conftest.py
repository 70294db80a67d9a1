"""Give every test a fresh app on a migrated database: SQLite by default, PostgreSQL on request.

``VETINH_TEST_BACKEND=postgresql`` (set by ``make test`` for its second pass) runs the
suite on a PostgreSQL database created for this run from ``VETINH_TEST_DATABASE_URL``
and dropped at the end. Every test starts from empty tables.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from his import accounts, create_app, events
from his.accounts import NewUser, create_user, issue_token
from his.cli import upgrade_database
from his.db import get_database
from his.models import Site, User
from his.models_registry import metadata

TEST_PASSWORD = "correct-horse-42"

# Property tests check results, not speed (speed is measured under bench/): no per-example
# deadline, so a loaded CI machine cannot fail a correct example for being slow.
hypothesis_settings.register_profile("vetinh", deadline=None)
hypothesis_settings.load_profile("vetinh")
BACKEND = os.environ.get("VETINH_TEST_BACKEND", "sqlite")


def pytest_report_header(config: pytest.Config) -> str:
    return f"vetinh database backend: {BACKEND}"


@dataclass
class TestDatabase:
    url: str
    server_url: str | None = None  # PostgreSQL maintenance URL used to drop it


def _create_postgres_database(base_url: str) -> TestDatabase:
    url = make_url(base_url)
    name = f"vetinh_test_{secrets.token_hex(6)}"
    admin = create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return TestDatabase(
        url=url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False),
        server_url=url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False),
    )


def _drop_postgres_database(db: TestDatabase) -> None:
    assert db.server_url is not None
    name = make_url(db.url).database
    admin = create_engine(db.server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing() -> Iterator[PasswordHasher]:
    """Hash the tests' passwords with argon2id at its lowest cost.

    The production parameters (argon2-cffi's defaults, RFC 9106's low-memory profile) cost
    about 0.14 s a hash and as much a check on this machine, and the suite creates and logs in
    hundreds of accounts. A check reads the cost from the stored hash, so cheap hashes are
    cheap to check; what is stored is still an argon2id hash, which the auth tests assert.
    Yields the production hasher, so that a test can check its cost.
    """
    saved = accounts._hasher
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts._dummy_hash.cache_clear()
    yield saved
    accounts._hasher = saved
    accounts._dummy_hash.cache_clear()


@pytest.fixture(scope="session")
def test_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    """Create and migrate the run's database; drop it at the end."""
    if BACKEND == "postgresql":
        base = os.environ.get("VETINH_TEST_DATABASE_URL")
        if not base:
            pytest.exit("VETINH_TEST_BACKEND=postgresql needs VETINH_TEST_DATABASE_URL", returncode=2)
        db = _create_postgres_database(base)
    else:
        db = TestDatabase(url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}")
    upgrade_database(db.url)
    yield db
    if db.server_url:
        _drop_postgres_database(db)


def _empty_all_tables(app: Flask) -> None:
    """Delete every row, children first (on PostgreSQL far cheaper than TRUNCATE per test)."""
    database = get_database(app)
    existing = set(inspect(database.engine).get_table_names())
    tables = [t for t in reversed(metadata.sorted_tables) if t.name in existing]
    with database.engine.begin() as conn:
        for table in tables:
            conn.execute(table.delete())


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    """Return the settings every test app gets; a test may change them before ``app`` is built."""
    return {
        "env": "testing",
        "secret_key": secrets.token_urlsafe(32),
        "scheduler_enabled": False,
        "audit_flush_seconds": 0.0,
        "data_dir": str(tmp_path / "data"),
        "event_backend": "memory",
    }


@pytest.fixture
def app(test_database: TestDatabase, settings_overrides: dict[str, Any]) -> Iterator[Flask]:
    """Build a fresh app from the factory on the run's database, emptied after the test."""
    application = create_app(database_url=test_database.url, **settings_overrides)
    yield application
    application.extensions["vetinh.audit"].close()
    _empty_all_tables(application)
    get_database(application).dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Any]:
    """Give a plain session on the app's database; the test commits what it wants kept.

    No app context is pushed: one held for the whole test would make every test-client
    request share ``g`` and so the first request's user.
    """
    session = get_database(app).sessionmaker()
    yield session
    session.close()


@pytest.fixture
def sites(app: Flask) -> dict[str, Site]:
    """Create the district and the central site."""
    with get_database(app).session_scope() as session:
        district = Site(code="DIST", name="Bệnh viện huyện", kind="district", facility_code="01234")
        central = Site(code="CENT", name="Bệnh viện trung ương", kind="central", facility_code="01001")
        session.add_all([district, central])
    return {"DIST": district, "CENT": central}


@pytest.fixture
def make_user(app: Flask, sites: dict[str, Site]) -> Callable[..., User]:
    """Create a user (staff at the district site unless told otherwise)."""
    counter = iter(range(1, 10_000))

    def factory(
        role: str = "doctor", *, username: str | None = None, site: str | None = "DIST", **extra: Any
    ) -> User:
        name = username or f"{role}{next(counter)}"
        with get_database(app).session_scope() as session:
            user = create_user(
                session,
                NewUser(
                    username=name,
                    password=extra.pop("password", TEST_PASSWORD),
                    full_name=extra.pop("full_name", f"Test {role.title()}"),
                    role=role,
                    site_code=site if role != "patient" else None,
                    **extra,
                ),
            )
        return user

    return factory


@pytest.fixture
def make_token(app: Flask) -> Callable[..., str]:
    """Issue a bearer token for a user with the given scopes."""

    def factory(user: User, scope: str = "user/*.*", ttl: int = 3600) -> str:
        with get_database(app).session_scope() as session:
            token, _row = issue_token(session, user=session.get(User, user.id), scope=scope, ttl_seconds=ttl)
        return token

    return factory


_CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """Read the CSRF token a page gives the browser."""
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = TEST_PASSWORD) -> Any:
    """Log in through the real login form."""
    token = csrf_token(client)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


@dataclass
class LiveServer:
    url: str
    app: Flask


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    """Serve the test app on a loopback port from a threaded server in a background thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield LiveServer(url=f"http://127.0.0.1:{port}", app=app)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


REDIS_URL = os.environ.get("VETINH_TEST_REDIS_URL", "")


@pytest.fixture
def redis_prefix() -> str:
    """Give the test a Redis key prefix of its own."""
    if not REDIS_URL:
        pytest.skip("VETINH_TEST_REDIS_URL is not set: this test needs a Redis for the event bus")
    return f"vetinh-test-{secrets.token_hex(4)}:"


@pytest.fixture
def redis_apps(
    test_database: TestDatabase, settings_overrides: dict[str, Any], redis_prefix: str
) -> Iterator[list[Flask]]:
    """Build two apps (two buses, as two processes would have) on one Redis prefix."""
    overrides = {**settings_overrides, "event_backend": "redis", "redis_url": REDIS_URL}
    apps = [create_app(database_url=test_database.url, **overrides) for _ in range(2)]
    for each in apps:
        each.config["VETINH_REDIS_PREFIX"] = redis_prefix
    yield apps
    for each in apps:
        events.close(each)
        each.extensions["vetinh.audit"].close()
        get_database(each).dispose()
