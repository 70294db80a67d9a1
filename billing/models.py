"""Define the billing context's tables: the dated price list."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Date, DateTime, Dialect, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from his.db import Base, utcnow

PRICE_KINDS: tuple[str, ...] = ("visit", "service", "drug", "supply", "bed", "other")
_THOUSANDTHS = Decimal("1000")


class Money(TypeDecorator[Decimal]):
    """Store an amount of đồng exactly, as a whole number of thousandths (prices have 3 decimals).

    SQLite has no exact decimal type, and money must never pass through a float.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        """Convert đồng to thousandths; raises ValueError for a value with more than 3 decimals."""
        if value is None:
            return None
        scaled = Decimal(value) * _THOUSANDTHS
        if scaled != scaled.to_integral_value():
            raise ValueError("a price has at most 3 decimals")
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(value) / _THOUSANDTHS).quantize(Decimal("0.001"))


class PriceEntry(Base):
    """The price of one item (visit, service, drug…) from ``valid_from`` until the next entry or ``valid_to``.

    ``insurance_price`` is the price the BHYT fund recognises, kept only where it differs.
    ``search_text`` is the code and name without diacritics, so that "sieu am" finds "Siêu âm".
    """

    __tablename__ = "billing_prices"
    __table_args__ = (UniqueConstraint("code", "valid_from"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(20))
    unit: Mapped[str] = mapped_column(String(50), default="")
    price: Mapped[Decimal] = mapped_column(Money())
    insurance_price: Mapped[Decimal | None] = mapped_column(Money(), nullable=True)
    xml_group: Mapped[str | None] = mapped_column(String(5), nullable=True)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    search_text: Mapped[str] = mapped_column(String(600), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
