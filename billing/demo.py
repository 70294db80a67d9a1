"""Give the demo site its (clearly labelled) demonstration price list on ``vetinh demo``."""

from __future__ import annotations

from sqlalchemy.orm import Session

from billing.services import DEMO_PRICE_LIST, import_prices, read_price_csv
from his.demo import register_demo_loader
from his.models import Site


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Import the demonstration price list (the same CSV path a hospital uses for its own)."""
    import_prices(session, read_price_csv(DEMO_PRICE_LIST.read_bytes()))


register_demo_loader(load_demo, order=40)
