"""The billing migration builds exactly the tables the models describe, and can be undone."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from his.cli import alembic_config, upgrade_database
from his.db import make_engine
from his.models_registry import metadata

BILLING_TABLES = (
    "billing_prices",
    "billing_charges",
    "billing_coverages",
    "billing_invoices",
    "billing_invoice_lines",
    "billing_payments",
    "billing_bank_notifications",
    "billing_refunds",
    "billing_einvoices",
    "billing_claim_submissions",
)


def test_the_billing_tables_match_the_models_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = [d for d in compare_metadata(context, metadata) if "billing_" in repr(d)]
            assert set(BILLING_TABLES) <= set(conn.dialect.get_table_names(conn))
        assert differences == []
        command.downgrade(alembic_config(url), "billing@base")
        with engine.connect() as conn:
            assert not set(BILLING_TABLES) & set(conn.dialect.get_table_names(conn))
    finally:
        engine.dispose()
