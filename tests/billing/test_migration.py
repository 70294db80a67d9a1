"""The billing migration builds exactly the tables the models describe, and can be undone."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
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
    "billing_receipts",
    "billing_receipt_counters",
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


def test_invoices_paid_before_receipts_existed_get_numbers_in_the_order_they_were_paid(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'older.sqlite3'}"
    config = alembic_config(url)
    upgrade_database(url)
    command.downgrade(config, "billing_0004")
    engine = make_engine(url)
    invoices = sa.table(
        "billing_invoices",
        *(
            sa.column(name)
            for name in ("id", "encounter_id", "patient_id", "visit_date", "status", "reasons")
        ),
        *(
            sa.column(name)
            for name in ("total", "fund", "copay", "patient_full", "amount_due", "amount_paid")
        ),
        sa.column("paid_at", sa.DateTime(timezone=True)),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    paid = {
        1: ("paid", datetime(2025, 12, 31, 17, 30, tzinfo=UTC)),  # 00:30 on 1 January 2026 in Hà Nội
        2: ("paid", datetime(2025, 12, 31, 16, 30, tzinfo=UTC)),  # 23:30 on 31 December 2025
        3: ("open", None),
        4: ("paid", datetime(2026, 3, 1, 2, 0, tzinfo=UTC)),
        5: ("paid", datetime(2025, 6, 1, 2, 0, tzinfo=UTC)),
    }
    try:
        with engine.begin() as conn:
            conn.execute(
                invoices.insert(),
                [
                    {
                        "id": invoice_id,
                        "encounter_id": f"e{invoice_id}",
                        "patient_id": "p",
                        "visit_date": date(2025, 6, 1),
                        "status": status,
                        "reasons": "",
                        **dict.fromkeys(("total", "fund", "copay", "patient_full", "amount_due"), 1000),
                        "amount_paid": 1000 if status == "paid" else 0,
                        "paid_at": paid_at,
                        "created_at": datetime(2025, 6, 1, tzinfo=UTC),
                        "updated_at": datetime(2025, 6, 1, tzinfo=UTC),
                    }
                    for invoice_id, (status, paid_at) in paid.items()
                ],
            )
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            numbers = dict(conn.execute(sa.text("SELECT invoice_id, number FROM billing_receipts")).all())
            counters = dict(conn.execute(sa.text("SELECT year, last FROM billing_receipt_counters")).all())
    finally:
        engine.dispose()
    assert numbers == {5: "BL2025-000001", 2: "BL2025-000002", 1: "BL2026-000001", 4: "BL2026-000002"}
    assert counters == {2025: 2, 2026: 2}
