"""Own the declarative base, the engine and the request-scoped session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, g, has_app_context
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one base every context's models derive from."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """Return the current time in UTC (timezone-aware)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Treat a naive datetime read back from SQLite as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Database:
    """Hold the engine and the session factory for one app."""

    def __init__(self, url: str, *, pool_size: int = 20, pool_timeout: int = 30) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, pool_timeout=pool_timeout)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """Give a session that commits on success and rolls back on error (jobs, CLI)."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str, *, pool_size: int = 20, pool_timeout: int = 30) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if path and path != ":memory:":
            # Reuse connections: opening one and setting its pragmas cost about a
            # millisecond on every request. The pool rolls back what a request leaves open.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout)
        else:
            kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    else:
        _ping_after_idle(engine)
    return engine


# A pooled connection that rested this long is pinged before a request gets it.
IDLE_BEFORE_PING = 10.0


def _ping_after_idle(engine: Engine) -> None:
    """Check a server connection before use only when it has rested in the pool a while.

    A database restart or an idle timeout kills connections that wait in the pool; a
    connection handed back moments ago is alive. SQLAlchemy's pre-ping would ask the server
    on every checkout, a round trip more on every request of a rush; this asks only after
    ``IDLE_BEFORE_PING`` seconds. A connection found dead is replaced (DisconnectionError
    makes the pool open a new one), so the request never sees it.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_BEFORE_PING:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(f"a pooled connection died while idle: {error}") from error


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def get_database(app: Flask | None = None) -> Database:
    """Return the app's Database."""
    from flask import current_app

    target = app or current_app
    database: Database = target.extensions["vetinh.db"]
    return database


def get_session() -> Session:
    """Return the unit-of-work session of the current request (created on first use)."""
    if not has_app_context():
        raise RuntimeError("get_session() needs an application context")
    session: Session | None = g.get("_vetinh_session")
    if session is None:
        session = get_database().sessionmaker()
        g._vetinh_session = session
    return session


def init_app(app: Flask, database: Database) -> None:
    """Bind the database to the app: commit after a good request, roll back otherwise."""
    app.extensions["vetinh.db"] = database

    @app.after_request
    def _commit(response: Any) -> Any:
        session: Session | None = g.get("_vetinh_session")
        if session is not None:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        return response

    @app.teardown_appcontext
    def _close(exc: BaseException | None) -> None:
        session: Session | None = g.pop("_vetinh_session", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()


def core_connection(session: Session) -> Connection:
    """Return the session's connection, for short Core statements on hot paths.

    A statement run on it, inside the session's transaction, skips the ORM's work around
    each statement (about a third of a short query's cost) and its autoflush: use it for
    statements that need no pending ORM object written first.
    """
    return session.connection()


def begin_immediate(session: Session) -> None:
    """Start the session's transaction with SQLite's write lock taken (no-op elsewhere).

    Must be called before the session has begun a transaction.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
