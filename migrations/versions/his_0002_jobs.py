"""jobs: APScheduler's job store and the per-job leases

Revision ID: his_0002
Revises: his_0001
Create Date: 2026-11-23 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "his_0002"
down_revision = "his_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Created here, not by APScheduler at start-up, so that two schedulers
    # starting at once do not race to create it.
    op.create_table(
        "scheduler_jobs",
        sa.Column("id", sa.Unicode(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_jobs")),
    )
    op.create_index(op.f("ix_scheduler_jobs_next_run_time"), "scheduler_jobs", ["next_run_time"])
    op.create_table(
        "job_leases",
        sa.Column("job_id", sa.String(length=191), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_fire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=20), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_index(op.f("ix_scheduler_jobs_next_run_time"), table_name="scheduler_jobs")
    op.drop_table("scheduler_jobs")
