"""The booking migration builds exactly the tables the models describe, and can be undone."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from his.cli import alembic_config, upgrade_database
from his.db import make_engine
from his.models_registry import metadata


def test_the_booking_tables_match_the_models_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = [d for d in compare_metadata(context, metadata) if "booking_" in repr(d)]
            assert "booking_counters" in conn.dialect.get_table_names(conn)
        assert differences == []
        command.downgrade(alembic_config(url), "booking@base")
        with engine.connect() as conn:
            assert not [t for t in conn.dialect.get_table_names(conn) if t.startswith("booking_")]
    finally:
        engine.dispose()


def test_an_older_database_upgrades_with_its_sessions_and_templates_seen_in_the_room(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'older.sqlite3'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "booking_0002")
    engine = make_engine(url)
    now = "2026-11-23 01:00:00"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO sites (id, code, name, kind, created_at) VALUES (1, 'DIST', 'BV', 'district', ?)",
                (now,),
            )
            conn.exec_driver_sql(
                "INSERT INTO booking_departments (id, site_id, code, name, active, created_at)"
                " VALUES (1, 1, 'NHI', 'Khoa Nhi', 1, ?)",
                (now,),
            )
            conn.exec_driver_sql(
                "INSERT INTO booking_clinics (id, site_id, department_id, code, name, room, numbering,"
                " online_capacity, walkin_capacity, minutes_per_patient, window_days_before, window_opens_at,"
                " window_closes_minutes_before_end, cancel_minutes_before_start, skip_back_places, max_skips,"
                " no_show_minutes_after_end, active, created_at)"
                " VALUES (1, 1, 1, 'PK1', 'Phòng khám 1', 'P1', 'split', 10, 5, 5, 7, '00:00:00', 30, 60, 3, 2, 0,"
                " 1, ?)",
                (now,),
            )
            conn.exec_driver_sql(
                "INSERT INTO booking_weekly_templates (id, clinic_id, weekday, part, starts, ends, active)"
                " VALUES (1, 1, 0, 'morning', '07:00:00', '11:00:00', 1)"
            )
            conn.exec_driver_sql(
                "INSERT INTO booking_sessions (id, clinic_id, day, part, starts_at, ends_at, minutes_per_patient,"
                " online_first, online_step, online_capacity, walkin_first, walkin_step, walkin_capacity,"
                " status, template_id, created_at)"
                " VALUES (1, 1, '2026-11-23', 'morning', ?, ?, 5, 1, 1, 10, 11, 1, 5, 'open', 1, ?)",
                (now, now, now),
            )
        upgrade_database(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT video FROM booking_weekly_templates").scalars().all() == [0]
            assert conn.exec_driver_sql("SELECT video FROM booking_sessions").scalars().all() == [0]
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert [d for d in compare_metadata(context, metadata) if "booking_" in repr(d)] == []
    finally:
        engine.dispose()
