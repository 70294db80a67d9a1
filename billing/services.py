"""Keep the dated price list: look up a price by date, search it, import and export it as CSV."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from billing.copay import PriceMissing
from billing.models import PRICE_KINDS, PriceEntry
from his.errors import N_, ValidationFailed

CSV_COLUMNS: tuple[str, ...] = (
    "code",
    "name",
    "kind",
    "unit",
    "price",
    "insurance_price",
    "valid_from",
    "valid_to",
    "xml_group",
)
REQUIRED_COLUMNS: frozenset[str] = frozenset({"code", "name", "kind", "price", "valid_from"})
MAX_IMPORT_ROWS = 50_000
DEMO_PRICE_LIST = Path(__file__).parent / "data" / "prices_demo.csv"
_PLAIN_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]{1,3})?$")
_CODE = re.compile(r"^[0-9A-Za-z._/\-]{1,50}$")


class PriceImportFailed(ValidationFailed):
    """A CSV price list has rows that cannot be imported; nothing was written."""

    code = "BILLING_PRICE_IMPORT"
    message = N_("The price list was not imported: some rows are not valid.")


@dataclass(frozen=True)
class PriceRow:
    """One checked row of a price list."""

    code: str
    name: str
    kind: str
    unit: str
    price: Decimal
    insurance_price: Decimal | None
    valid_from: date
    valid_to: date | None
    xml_group: str | None


@dataclass(frozen=True)
class ImportResult:
    """How many entries an import created, changed, and found already as the file has them."""

    created: int
    updated: int
    unchanged: int = 0


@dataclass(frozen=True)
class PricePage:
    """One page of a price-list search."""

    entries: list[PriceEntry]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def fold(text: str) -> str:
    """Return ``text`` in lower case without Vietnamese diacritics, for searching."""
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFKD", text)
    return " ".join("".join(char for char in text if not unicodedata.combining(char)).lower().split())


def _in_force_on(day: date) -> Select[PriceEntry]:
    """Select the entries in force on ``day``: the latest start per code, unless it has ended."""
    latest = (
        select(PriceEntry.code, func.max(PriceEntry.valid_from).label("since"))
        .where(PriceEntry.valid_from <= day)
        .group_by(PriceEntry.code)
        .subquery()
    )
    return (
        select(PriceEntry)
        .join(latest, and_(PriceEntry.code == latest.c.code, PriceEntry.valid_from == latest.c.since))
        .where(or_(PriceEntry.valid_to.is_(None), PriceEntry.valid_to >= day))
    )


def price_on(session: Session, code: str, day: date) -> PriceEntry:
    """Return the price of ``code`` in force on ``day``.

    Raises PriceMissing when the item has no price on that day, so that a charge is
    flagged rather than billed as zero.
    """
    entry = session.scalars(
        select(PriceEntry)
        .where(PriceEntry.code == code, PriceEntry.valid_from <= day)
        .order_by(PriceEntry.valid_from.desc())
        .limit(1)
    ).first()
    if entry is None or (entry.valid_to is not None and entry.valid_to < day):
        raise PriceMissing(fields={"code": code}, extra={"item_code": code, "day": day.isoformat()})
    return entry


def search_prices(
    session: Session,
    day: date,
    *,
    query: str = "",
    kind: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> PricePage:
    """Return the entries in force on ``day`` whose code or name holds every word of ``query``.

    Words match without regard to case or diacritics. Never raises for an empty result.
    """
    statement = _in_force_on(day)
    for word in fold(query).split()[:10]:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(PriceEntry.search_text.like(f"%{escaped}%", escape="\\"))
    if kind in PRICE_KINDS:
        statement = statement.where(PriceEntry.kind == kind)
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    page = max(1, page)
    entries = session.scalars(
        statement.order_by(PriceEntry.kind, PriceEntry.name, PriceEntry.code)
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return PricePage(entries=list(entries), total=total, page=page, per_page=per_page)


def all_prices_on(session: Session, day: date) -> list[PriceEntry]:
    """Return every entry in force on ``day``, ordered as the public page shows them."""
    statement = _in_force_on(day).order_by(PriceEntry.kind, PriceEntry.name, PriceEntry.code)
    return list(session.scalars(statement).all())


class RowError(ValueError):
    """One cell of a CSV row is not valid."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"{column}: {message}")
        self.column = column
        self.message = message


def _money(cells: dict[str, str], column: str) -> Decimal:
    value = cells.get(column, "").replace(" ", "")
    if not _PLAIN_DECIMAL.fullmatch(value):
        raise RowError(column, N_("Write the amount in đồng as digits, with at most 3 decimals after a dot."))
    return Decimal(value)


def _day(cells: dict[str, str], column: str) -> date:
    try:
        return date.fromisoformat(cells.get(column, ""))
    except ValueError as exc:
        raise RowError(column, N_("Write the date as YYYY-MM-DD.")) from exc


def check_price_row(raw: dict[str, str]) -> PriceRow:
    """Check one CSV row and return it typed.

    Raises RowError naming the column and what is wrong with it.
    """
    cells = {key.strip(): (value or "").strip() for key, value in raw.items() if key}
    code = cells.get("code", "")
    if not _CODE.fullmatch(code):
        raise RowError("code", N_("An item code has 1 to 50 letters, digits or . _ / -."))
    name = cells.get("name", "")
    if not name or len(name) > 500:
        raise RowError("name", N_("Give the item a name of at most 500 characters."))
    kind = cells.get("kind", "")
    if kind not in PRICE_KINDS:
        raise RowError("kind", N_("The kind must be one of visit, service, drug, supply, bed, other."))
    price = _money(cells, "price")
    insurance_price = _money(cells, "insurance_price") if cells.get("insurance_price") else None
    valid_from = _day(cells, "valid_from")
    valid_to = _day(cells, "valid_to") if cells.get("valid_to") else None
    if valid_to is not None and valid_to < valid_from:
        raise RowError("valid_to", N_("The end date is before the start date."))
    return PriceRow(
        code=code,
        name=name,
        kind=kind,
        unit=cells.get("unit", "")[:50],
        price=price,
        insurance_price=None if insurance_price == price else insurance_price,
        valid_from=valid_from,
        valid_to=valid_to,
        xml_group=cells.get("xml_group") or None,
    )


def read_price_csv(data: bytes | str) -> list[PriceRow]:
    """Read and check a whole CSV price list (UTF-8, with or without BOM, comma or semicolon).

    Raises PriceImportFailed listing every bad row by its line number, or naming the
    missing columns; returns the rows only when all of them are good.
    """
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = {name.strip() for name in (reader.fieldnames or [])}
    missing = sorted(REQUIRED_COLUMNS - columns)
    if missing:
        raise PriceImportFailed(
            N_("Some required columns are missing."),
            fields={"columns": ", ".join(missing)},
            extra={"missing_columns": missing},
        )
    rows: list[PriceRow] = []
    errors: list[dict[str, str | int]] = []
    seen: set[tuple[str, date]] = set()
    for count, raw in enumerate(reader, start=1):
        if count > MAX_IMPORT_ROWS:
            raise PriceImportFailed(N_("The file has too many rows."), fields={"file": str(MAX_IMPORT_ROWS)})
        try:
            row = check_price_row(raw)
            if (row.code, row.valid_from) in seen:
                raise RowError(
                    "code", N_("This item already has a price from this date earlier in the file.")
                )
        except RowError as exc:
            errors.append({"line": reader.line_num, "column": exc.column, "message": exc.message})
            continue
        seen.add((row.code, row.valid_from))
        rows.append(row)
    if errors:
        raise PriceImportFailed(
            fields={f"line {error['line']}.{error['column']}": str(error["message"]) for error in errors},
            extra={"rows": errors},
        )
    return rows


def import_prices(session: Session, rows: Iterable[PriceRow]) -> ImportResult:
    """Write checked rows: a new (code, start date) is created, an existing one updated where it differs.

    A row that matches its entry in every column is counted as unchanged and not
    written, so importing the same file twice changes nothing the second time. Never commits.
    """
    created = updated = unchanged = 0
    for row in rows:
        entry = session.scalars(
            select(PriceEntry).where(PriceEntry.code == row.code, PriceEntry.valid_from == row.valid_from)
        ).first()
        wanted = {
            "name": row.name,
            "kind": row.kind,
            "unit": row.unit,
            "price": row.price,
            "insurance_price": row.insurance_price,
            "valid_to": row.valid_to,
            "xml_group": row.xml_group,
            "search_text": fold(f"{row.code} {row.name}"),
        }
        if entry is None:
            session.add(PriceEntry(code=row.code, valid_from=row.valid_from, **wanted))
            created += 1
            continue
        changes = {name: value for name, value in wanted.items() if getattr(entry, name) != value}
        if not changes:
            unchanged += 1
            continue
        for name, value in changes.items():
            setattr(entry, name, value)
        updated += 1
    session.flush()
    return ImportResult(created=created, updated=updated, unchanged=unchanged)


def _plain(amount: Decimal | None) -> str:
    if amount is None:
        return ""
    return format(amount.normalize(), "f") if amount == amount.to_integral_value() else format(amount, "f")


def export_prices_csv(entries: Iterable[PriceEntry]) -> str:
    """Write entries as a CSV (with a BOM, so spreadsheets show the Vietnamese letters) that imports back."""
    buffer = io.StringIO(newline="")
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        cells = [
            entry.code,
            entry.name,
            entry.kind,
            entry.unit,
            _plain(entry.price),
            _plain(entry.insurance_price),
            entry.valid_from.isoformat(),
            entry.valid_to.isoformat() if entry.valid_to else "",
            entry.xml_group or "",
        ]
        # A cell starting with = + - @ would run as a formula in a spreadsheet.
        writer.writerow([f"'{cell}" if cell[:1] in ("=", "+", "-", "@") else cell for cell in cells])
    return buffer.getvalue()
