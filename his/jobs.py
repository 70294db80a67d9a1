"""Schedule background jobs with APScheduler, one runner per job at a time.

Contexts register jobs at import of their ``jobs.py``::

    register_job("booking.release_no_shows", release_no_shows, "interval", minutes=5)

A job function takes the app, runs inside ``app.app_context()`` and gets a unit
of work: ``his.db.get_session()`` returns a session that commits when the job
returns and rolls back when it raises. Jobs must be idempotent.

Where the scheduler runs is a setting: inside the app process
(``scheduler_enabled``, the embedded default) or in its own process
(``vetinh scheduler`` → :func:`run_scheduler`). All schedulers share APScheduler's
SQLAlchemy job store on the app's database. A shared store alone lets two
schedulers both pick up a due job, so every run first takes a lease on the job's
row in ``job_leases`` by one conditional UPDATE (see :class:`JobLeases`): two
schedulers never run the same job at once, and a fire time handled by one is
skipped by the other.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, cast
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask, current_app, g
from sqlalchemy import Connection, Table, and_, delete, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from his.db import Database, get_database, get_session, utcnow
from his.jobmodels import SCHEDULER_JOBS_TABLE, JobLease

log = logging.getLogger(__name__)

SCHEDULER_KEY = "vetinh.scheduler"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_WORKERS = 4
TRIGGERS: dict[str, type[BaseTrigger]] = {
    "interval": IntervalTrigger,
    "cron": CronTrigger,
    "date": DateTrigger,
}
JOB_OPTIONS = ("misfire_grace_time", "coalesce", "max_instances")
JOB_DEFAULTS: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 300}

JobFunction = Callable[[Flask], object]


@dataclass(frozen=True)
class JobSpec:
    """A registered job: what to run and when."""

    job_id: str
    func: JobFunction
    trigger: str | BaseTrigger
    trigger_args: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def make_trigger(self, timezone: Any) -> BaseTrigger:
        """Build the APScheduler trigger in the scheduler's time zone."""
        if isinstance(self.trigger, BaseTrigger):
            return self.trigger
        return TRIGGERS[self.trigger](**{"timezone": timezone, **self.trigger_args})


_registry: dict[str, JobSpec] = {}
_registry_lock = threading.Lock()
_running: weakref.WeakSet[VetinhScheduler] = weakref.WeakSet()


def register_job(job_id: str, func: JobFunction, trigger: str | BaseTrigger, **trigger_args: Any) -> JobSpec:
    """Register (or replace) a job that runs ``func(app)`` on ``trigger``.

    ``trigger`` is ``"interval"``, ``"cron"``, ``"date"`` or an APScheduler
    trigger; ``trigger_args`` are its arguments, plus optionally the job options
    ``misfire_grace_time``, ``coalesce`` and ``max_instances``. A scheduler that
    is already running picks the job up at once.

    Raises ValueError for an unknown trigger name and TypeError for arguments the
    trigger does not take.
    """
    options = {key: trigger_args.pop(key) for key in JOB_OPTIONS if key in trigger_args}
    if isinstance(trigger, str) and trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}; use one of {sorted(TRIGGERS)}")
    spec = JobSpec(job_id, func, trigger, dict(trigger_args), options)
    spec.make_trigger(UTC)  # fail at registration, not at 2 a.m.
    with _registry_lock:
        _registry[job_id] = spec
        schedulers = list(_running)
    for scheduler in schedulers:
        scheduler.sync_job(spec)
    return spec


def unregister_job(job_id: str) -> None:
    """Forget a registered job (running schedulers remove it from the store)."""
    with _registry_lock:
        _registry.pop(job_id, None)
        schedulers = list(_running)
    for scheduler in schedulers:
        scheduler.drop_job(job_id)


def registered_jobs() -> dict[str, JobSpec]:
    """Return a copy of the registry, by job id."""
    with _registry_lock:
        return dict(_registry)


def run_registered_job(job_id: str) -> object:
    """Run the registered job ``job_id`` for the current app inside a unit of work.

    This is the function APScheduler stores for every job (by reference, so the
    job store never pickles an app). Raises LookupError for an unknown job id.
    """
    spec = registered_jobs().get(job_id)
    if spec is None:
        raise LookupError(f"no job registered as {job_id!r}")
    app = cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
    with get_database(app).session_scope() as session:
        # Make get_session() (and so every service, and the after-commit
        # delivery of events) use the job's unit of work.
        g._vetinh_session = session
        try:
            return spec.func(app)
        finally:
            g.pop("_vetinh_session", None)


class JobLeases:
    """Take, renew and free per-job leases in ``job_leases``.

    ``acquire`` is one transaction: make sure the job's row exists, then
    ``UPDATE ... WHERE job_id = :id AND (lease free or expired) AND (last fire
    time earlier than this one)``. Exactly one concurrent caller sees one updated
    row. PostgreSQL re-checks the WHERE clause on the locked row; SQLite takes its
    write lock at BEGIN IMMEDIATE. A holder renews its lease while the job runs,
    so an expired lease means a dead holder.
    """

    def __init__(
        self,
        database: Database,
        *,
        holder: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.database = database
        self.holder = holder or default_holder_name()
        self.lease = timedelta(seconds=lease_seconds)
        self.table = cast(Table, JobLease.__table__)

    def acquire(self, job_id: str, fire_time: datetime) -> bool:
        """Take the lease for ``fire_time``; return False if another runner has it or had it."""
        now = utcnow()
        fire_time = fire_time.astimezone(UTC)
        t = self.table
        with self._transaction() as conn:
            conn.execute(self._insert_missing(job_id))
            result = conn.execute(
                update(t)
                .where(
                    and_(
                        t.c.job_id == job_id,
                        or_(t.c.leased_until.is_(None), t.c.leased_until < now),
                        or_(t.c.last_fire_time.is_(None), t.c.last_fire_time < fire_time),
                    )
                )
                .values(
                    holder=self.holder,
                    leased_until=now + self.lease,
                    last_fire_time=fire_time,
                    last_started_at=now,
                )
            )
            return result.rowcount == 1

    def renew(self, job_id: str) -> bool:
        """Extend our lease; return False if we no longer hold it."""
        t = self.table
        with self._transaction() as conn:
            result = conn.execute(
                update(t)
                .where(and_(t.c.job_id == job_id, t.c.holder == self.holder))
                .values(leased_until=utcnow() + self.lease)
            )
            return result.rowcount == 1

    def release(self, job_id: str, outcome: str, error: str | None = None) -> None:
        """Free our lease and record how the run went."""
        t = self.table
        with self._transaction() as conn:
            conn.execute(
                update(t)
                .where(and_(t.c.job_id == job_id, t.c.holder == self.holder))
                .values(
                    holder=None,
                    leased_until=None,
                    last_finished_at=utcnow(),
                    last_outcome=outcome,
                    last_error=error,
                )
            )

    @contextmanager
    def keep_alive(self, job_id: str) -> Iterator[None]:
        """Renew the lease in the background while the body runs."""
        stop = threading.Event()
        interval = max(self.lease.total_seconds() / 3, 0.05)

        def renew_until_stopped() -> None:
            while not stop.wait(interval):
                try:
                    if not self.renew(job_id):
                        log.error("Lost the lease of job %s while it was running", job_id)
                        return
                except Exception:
                    log.exception("Could not renew the lease of job %s", job_id)

        thread = threading.Thread(target=renew_until_stopped, name=f"lease-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _insert_missing(self, job_id: str) -> Any:
        insert = pg_insert if self.database.engine.dialect.name == "postgresql" else sqlite_insert
        return insert(self.table).values(job_id=job_id).on_conflict_do_nothing()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.database.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn


def default_holder_name() -> str:
    """Name this scheduler for the lease table: host, process id and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeasedExecutor(ThreadPoolExecutor):
    """Run each job in a thread, in the app's context, only while holding its lease."""

    def __init__(self, app: Flask, leases: JobLeases, max_workers: int = DEFAULT_WORKERS):
        super().__init__(max_workers)
        self.app = app
        self.leases = leases

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def done(future: Any) -> None:
            exc = future.exception()
            if exc is not None:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(self._run_leased, job, run_times).add_done_callback(done)

    def _run_leased(self, job: Job, run_times: list[datetime]) -> list[JobExecutionEvent]:
        job_id = job.id
        if job_id not in registered_jobs():
            log.warning("Job %s is in the store but not registered here; skipped", job_id)
            return []
        if not self.leases.acquire(job_id, max(run_times)):
            log.info("Job %s is run by another scheduler; skipped here", job_id)
            return []
        events: list[JobExecutionEvent] = []
        try:
            with self.leases.keep_alive(job_id), self.app.app_context():
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
        finally:
            self.leases.release(job_id, *_outcome(events))
        return events


def _outcome(events: list[JobExecutionEvent]) -> tuple[str, str | None]:
    for event in events:
        if event.code == EVENT_JOB_ERROR:
            return "error", (event.traceback or repr(event.exception))[-4000:]
    if events and all(event.code == EVENT_JOB_MISSED for event in events):
        return "missed", None
    if not events:
        return "error", "the job did not run"
    return "success", None


LOG_LEVEL_KEY = "VETINH_LOG_LEVEL"


def scheduler_log_level(app: Flask) -> int:
    """Return the level for APScheduler's own loggers: WARNING unless asked for more.

    APScheduler logs every run at INFO ("Running job ...", every few seconds), which buries
    the server's own lines. ``VETINH_LOG_LEVEL`` (app config, else the environment) set to
    INFO or DEBUG brings those lines back.
    """
    raw = app.config.get(LOG_LEVEL_KEY) or os.environ.get(LOG_LEVEL_KEY) or ""
    asked = logging.getLevelName(str(raw).strip().upper()) if raw else None
    if isinstance(asked, int):
        return min(asked, logging.WARNING)
    return logging.WARNING


class VetinhScheduler:
    """One APScheduler scheduler bound to an app, its job store and its leases."""

    def __init__(
        self,
        app: Flask,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.app = app
        logging.getLogger("apscheduler").setLevel(scheduler_log_level(app))
        database = get_database(app)
        self.leases = JobLeases(database, lease_seconds=lease_seconds)
        settings = app.extensions.get("vetinh.settings")
        self.timezone = ZoneInfo(settings.timezone) if settings is not None else UTC
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=database.engine, tablename=SCHEDULER_JOBS_TABLE)},
            executors={"default": LeasedExecutor(app, self.leases, workers)},
            job_defaults=JOB_DEFAULTS,
            timezone=self.timezone,
        )

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def start(self) -> None:
        """Put the registered jobs in the store and start running them."""
        self.scheduler.start(paused=True)
        registry = registered_jobs()
        for spec in registry.values():
            self.sync_job(spec)
        for job in self.scheduler.get_jobs():
            if job.id not in registry:
                self.drop_job(job.id)
        with _registry_lock:
            _running.add(self)
        self.scheduler.resume()
        log.info("Scheduler %s started with jobs %s", self.leases.holder, sorted(registry))

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let running jobs finish and free their leases."""
        with _registry_lock:
            _running.discard(self)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def sync_job(self, spec: JobSpec) -> None:
        """Add the job to the store, keeping its next run time if its trigger is unchanged."""
        trigger = spec.make_trigger(self.timezone)
        existing = self.scheduler.get_job(spec.job_id)
        if existing is not None and str(existing.trigger) == str(trigger) and existing.args == (spec.job_id,):
            return
        self.scheduler.add_job(
            run_registered_job,
            trigger,
            args=[spec.job_id],
            id=spec.job_id,
            name=spec.job_id,
            replace_existing=True,
            **spec.options,
        )

    def drop_job(self, job_id: str) -> None:
        """Remove a job from the store (another scheduler may have done it already)."""
        with suppress(JobLookupError):
            self.scheduler.remove_job(job_id)


def init_app(app: Flask) -> None:
    """Start the in-process scheduler when ``scheduler_enabled`` is set."""
    app.extensions[SCHEDULER_KEY] = None
    settings = app.extensions.get("vetinh.settings")
    if settings is None or not settings.scheduler_enabled:
        return
    scheduler = VetinhScheduler(app)
    scheduler.start()
    app.extensions[SCHEDULER_KEY] = scheduler
    atexit.register(scheduler.shutdown, False)


def run_scheduler(
    app: Flask,
    *,
    stop: threading.Event | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> None:
    """Run the app's jobs in this process until SIGTERM or SIGINT (or ``stop`` is set).

    On the way out, running jobs finish and their leases are freed.
    """
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("Scheduler stopping on signal %s", signal.Signals(signum).name)
            stop.set()

        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            previous[stop_signal] = signal.signal(stop_signal, request_stop)
    scheduler: VetinhScheduler | None = app.extensions.get(SCHEDULER_KEY)
    if scheduler is None or not scheduler.running:
        scheduler = VetinhScheduler(app, lease_seconds=lease_seconds)
        scheduler.start()
    # else: the app was built with scheduler_enabled and already runs one; a
    # second scheduler in the same process would only contend for the leases.
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=True)
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
        log.info("Scheduler %s stopped", scheduler.leases.holder)


def run_now(app: Flask, job_id: str, *, leases: JobLeases | None = None) -> bool:
    """Run a registered job once, now, under its lease (CLI, admin, tests).

    Returns False without running it when another runner holds the lease.
    Raises LookupError for an unknown job, and whatever the job raises.
    """
    if job_id not in registered_jobs():
        raise LookupError(f"no job registered as {job_id!r}")
    leases = leases or JobLeases(get_database(app))
    if not leases.acquire(job_id, utcnow()):
        return False
    try:
        with leases.keep_alive(job_id), app.app_context():
            run_registered_job(job_id)
    except Exception:
        leases.release(job_id, "error", traceback.format_exc()[-4000:])
        raise
    leases.release(job_id, "success")
    return True


def purge_expired_credentials(app: Flask) -> dict[str, int]:
    """Delete API tokens and web sessions whose expiry has passed."""
    from his.models import ApiToken, WebSession

    session = get_session()
    now = utcnow()
    tokens = session.execute(delete(ApiToken).where(ApiToken.expires_at < now))
    sessions = session.execute(delete(WebSession).where(WebSession.expires_at < now))
    purged = {
        "api_tokens": int(getattr(tokens, "rowcount", 0) or 0),
        "web_sessions": int(getattr(sessions, "rowcount", 0) or 0),
    }
    log.info("Purged expired credentials: %s", purged)
    return purged


register_job("his.purge_expired_credentials", purge_expired_credentials, "interval", minutes=15)
