"""Give the demo site its (clearly labelled) demonstration price list on ``vetinh demo``.

Besides the CSV of visits and services, every drug of the records context's seed
catalogue gets a price (its catalogue price, from the same date as the demo list), so a
drug dispensed in the demo is charged instead of flagged. The drugs come from the
records service, never from its tables.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy.orm import Session

from billing.services import (
    DEMO_PRICE_LIST,
    ImportResult,
    PriceRow,
    check_price_row,
    import_prices,
    read_price_csv,
)
from his.demo import register_demo_loader
from his.models import Site
from his.records.catalogue import seed_drugs

DEMO_PRICES_FROM = date(2024, 7, 1)
DRUG_XML_GROUP = "4"  # XML 130 MA_NHOM: drug in the fund's list


def seed_drug_prices(valid_from: date = DEMO_PRICES_FROM) -> list[PriceRow]:
    """Return a price row (kind ``drug``, at its catalogue price) for each drug of the seed catalogue.

    Raises RowError when a catalogue entry cannot be a price-list row (a bad code or price).
    """
    return [
        check_price_row(
            {
                "code": drug.code,
                "name": drug.name,
                "kind": "drug",
                "unit": drug.unit,
                "price": format(drug.price, "f"),
                "insurance_price": "",
                "valid_from": valid_from.isoformat(),
                "valid_to": "",
                "xml_group": DRUG_XML_GROUP,
            }
        )
        for drug in sorted(seed_drugs().values(), key=lambda drug: drug.code)
    ]


def load_demo_prices(session: Session) -> ImportResult:
    """Import the demonstration price list and the seed drugs' prices (the same path a hospital's CSV takes)."""
    rows = read_price_csv(DEMO_PRICE_LIST.read_bytes()) + seed_drug_prices()
    return import_prices(session, rows)


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Give the demo its prices: visits, services and every seed drug."""
    load_demo_prices(session)


register_demo_loader(load_demo, order=40)
