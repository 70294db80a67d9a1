"""Define the tables the scheduler keeps: APScheduler's job store and the job leases."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, LargeBinary, String, Text, Unicode
from sqlalchemy.orm import Mapped, mapped_column

from his.db import Base

SCHEDULER_JOBS_TABLE = "scheduler_jobs"


class SchedulerJob(Base):
    """One APScheduler job as its SQLAlchemy job store keeps it.

    APScheduler reads and writes this table itself; the model exists so that the
    migration creates it (two schedulers starting at once would otherwise race to
    create it) and so that Alembic does not mistake it for a stray table. The
    columns must match ``apscheduler.jobstores.sqlalchemy.SQLAlchemyJobStore``.
    """

    __tablename__ = SCHEDULER_JOBS_TABLE

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class JobLease(Base):
    """Who may run a job right now, until when, and how its last run went.

    A scheduler takes the lease with one conditional UPDATE (free or expired, and
    not already run for this fire time), renews it while the job runs, and frees
    it when the job ends. That UPDATE is atomic on SQLite and PostgreSQL alike,
    so two scheduler processes never run the same job at once, and a fire time
    that one of them handled is not handled again by the other.
    """

    __tablename__ = "job_leases"

    job_id: Mapped[str] = mapped_column(String(191), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_fire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_outcome: Mapped[str | None] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text)
