"""Test job registration, job leases, running jobs in a unit of work, and the purge job."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import func, select

from his import create_app, events, jobs
from his.cli import alembic_config, upgrade_database
from his.db import get_database, get_session, make_engine, utcnow
from his.jobmodels import JobLease
from his.models import ApiToken, Site, WebSession
from his.models_registry import metadata


@pytest.fixture
def temporary_jobs() -> Iterator[list[str]]:
    """Collect the ids of jobs a test registers and unregister them afterwards."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        jobs.unregister_job(job_id)


def test_register_job_refuses_a_schedule_it_cannot_keep(temporary_jobs: list[str]) -> None:
    with pytest.raises(ValueError, match="unknown trigger"):
        jobs.register_job("test.bad", lambda app: None, "every-now-and-then", minutes=5)
    with pytest.raises(TypeError):
        jobs.register_job("test.bad", lambda app: None, "interval", fortnights=1)
    assert "test.bad" not in jobs.registered_jobs()


def test_the_purge_job_is_registered() -> None:
    assert "his.purge_expired_credentials" in jobs.registered_jobs()


def test_one_lease_holder_at_a_time(app: Flask) -> None:
    database = get_database(app)
    first = jobs.JobLeases(database, holder="first")
    second = jobs.JobLeases(database, holder="second")
    fire = utcnow()
    assert first.acquire("test.lease", fire)
    assert not second.acquire("test.lease", fire + timedelta(minutes=1))
    first.release("test.lease", "success")
    # The fire time the first holder handled is not handled again...
    assert not second.acquire("test.lease", fire)
    # ...but the next one is free for anyone.
    assert second.acquire("test.lease", fire + timedelta(minutes=1))


def test_a_dead_holders_lease_expires(app: Flask) -> None:
    database = get_database(app)
    crashed = jobs.JobLeases(database, holder="crashed", lease_seconds=0.2)
    survivor = jobs.JobLeases(database, holder="survivor")
    fire = utcnow()
    assert crashed.acquire("test.expiry", fire)
    assert not survivor.acquire("test.expiry", fire + timedelta(seconds=1))
    time.sleep(0.3)
    assert survivor.acquire("test.expiry", fire + timedelta(seconds=1))


def test_concurrent_acquires_have_exactly_one_winner(app: Flask) -> None:
    database = get_database(app)
    fire = utcnow()
    barrier = threading.Barrier(8)
    winners: list[str] = []

    def contend(name: str) -> None:
        leases = jobs.JobLeases(database, holder=name)
        barrier.wait()
        if leases.acquire("test.race", fire):
            winners.append(name)

    threads = [threading.Thread(target=contend, args=(f"s{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_a_running_job_keeps_its_lease(app: Flask) -> None:
    database = get_database(app)
    runner = jobs.JobLeases(database, holder="runner", lease_seconds=0.3)
    other = jobs.JobLeases(database, holder="other")
    assert runner.acquire("test.long", utcnow())
    with runner.keep_alive("test.long"):
        time.sleep(0.8)  # well past the lease, which the runner keeps renewing
        assert not other.acquire("test.long", utcnow())


def test_run_now_gives_the_job_the_app_and_a_unit_of_work(app: Flask, temporary_jobs: list[str]) -> None:
    seen: dict[str, Any] = {}

    def add_site(job_app: Flask) -> None:
        seen["app"] = job_app
        get_session().add(Site(code="JOBS", name="Trạm y tế xã", kind="district"))
        events.publish("site.created", {"code": "JOBS"})

    jobs.register_job("test.add_site", add_site, "interval", hours=1)
    temporary_jobs.append("test.add_site")
    with app.app_context(), events.subscribe("site.created", timeout=0.2) as sub:
        assert jobs.run_now(app, "test.add_site")
        published = [e.data for e in sub]
    assert seen["app"] is app
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).where(Site.code == "JOBS")) == 1
        lease = session.get(JobLease, "test.add_site")
        assert lease is not None
        assert (lease.last_outcome, lease.holder) == ("success", None)
    assert published == [{"code": "JOBS"}]


def test_a_failing_job_leaves_nothing_behind(app: Flask, temporary_jobs: list[str]) -> None:
    def half_done(job_app: Flask) -> None:
        get_session().add(Site(code="HALF", name="Nửa chừng", kind="district"))
        events.publish("site.created", {"code": "HALF"})
        get_session().flush()
        raise RuntimeError("the upstream registry is down")

    jobs.register_job("test.half_done", half_done, "interval", hours=1)
    temporary_jobs.append("test.half_done")
    with app.app_context(), events.subscribe("site.created", timeout=0.2) as sub:
        with pytest.raises(RuntimeError):
            jobs.run_now(app, "test.half_done")
        assert list(sub) == []
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).where(Site.code == "HALF")) == 0
        lease = session.get(JobLease, "test.half_done")
        assert lease is not None
        assert lease.last_outcome == "error"
        assert "upstream registry is down" in (lease.last_error or "")
        assert lease.holder is None


def test_purge_removes_expired_tokens_and_sessions_only(app: Flask) -> None:
    now = utcnow()
    with get_database(app).session_scope() as session:
        session.add_all(
            [
                ApiToken(token_hash="a" * 64, scope="user/*.*", expires_at=now - timedelta(1)),
                ApiToken(token_hash="b" * 64, scope="user/*.*", expires_at=now + timedelta(1)),
                WebSession(id="old", data={}, expires_at=now - timedelta(seconds=1)),
                WebSession(id="live", data={}, expires_at=now + timedelta(hours=8)),
            ]
        )
    assert jobs.run_now(app, "his.purge_expired_credentials")
    with get_database(app).session_scope() as session:
        assert session.scalars(select(ApiToken.token_hash)).all() == ["b" * 64]
        assert session.scalars(select(WebSession.id)).all() == ["live"]


def test_in_process_scheduler_runs_registered_jobs(
    test_database: Any, settings_overrides: dict[str, Any], temporary_jobs: list[str]
) -> None:
    ran = threading.Event()
    jobs.register_job("test.tick", lambda app: ran.set(), "interval", seconds=1)
    temporary_jobs.append("test.tick")
    app = create_app(database_url=test_database.url, **{**settings_overrides, "scheduler_enabled": True})
    scheduler = app.extensions[jobs.SCHEDULER_KEY]
    try:
        assert scheduler is not None
        assert scheduler.running
        assert ran.wait(5), "the in-process scheduler did not run the job"
    finally:
        scheduler.shutdown()
        app.extensions["vetinh.audit"].close()
        get_database(app).dispose()


def test_migration_creates_the_scheduler_tables(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = [
                d
                for d in compare_metadata(context, metadata)
                if any(name in repr(d) for name in ("job_leases", "scheduler_jobs"))
            ]
        assert differences == []
        command.downgrade(alembic_config(url), "his_0001")
        with engine.connect() as conn:
            names = set(conn.dialect.get_table_names(conn))
        assert not {"job_leases", "scheduler_jobs"} & names
    finally:
        engine.dispose()


def _ticks_logged(test_database: Any, settings_overrides: dict[str, Any], caplog: Any, **extra: Any) -> bool:
    import logging

    ran = threading.Event()
    jobs.register_job("test.quiet", lambda app: ran.set(), "interval", seconds=1)
    caplog.set_level(logging.INFO)
    app = create_app(
        database_url=test_database.url, **{**settings_overrides, "scheduler_enabled": True, **extra}
    )
    scheduler = app.extensions[jobs.SCHEDULER_KEY]
    try:
        assert ran.wait(5)
        time.sleep(0.2)
    finally:
        scheduler.shutdown()
        app.extensions["vetinh.audit"].close()
        get_database(app).dispose()
        jobs.unregister_job("test.quiet")
    return any(r.name.startswith("apscheduler") and "Running job" in r.getMessage() for r in caplog.records)


def test_the_scheduler_does_not_log_every_run_unless_asked(
    test_database: Any, settings_overrides: dict[str, Any], caplog: Any
) -> None:
    assert not _ticks_logged(test_database, settings_overrides, caplog)
    caplog.clear()
    assert _ticks_logged(test_database, settings_overrides, caplog, extra={"vetinh_log_level": "info"})
