"""Read the records catalogues we ship: ICD-10 in Vietnamese, drugs, interactions, dose limits, services.

The files under ``his/records/data/`` are written by the project from public facts
(ICD-10 titles, WHO ATC/DDD, well-known interactions and dose ceilings). Drug codes
``VTS…`` are our own seed codes, not national codes; a hospital imports its real
catalogue with national codes from CSV (``parse_drug_csv``).
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from his.errors import N_, ValidationFailed

DATA_DIR = Path(__file__).resolve().parent / "data"
DRUG_SYSTEM = "urn:vetinh:drug"
# The code system of orderable services: the hospital's price-list codes (XN.CTM, CDHA.XQNG).
SERVICE_SYSTEM = "urn:vetinh:service-code"
INGREDIENT_SYSTEM = "urn:vetinh:ingredient"
DRUG_CLASS_SYSTEM = "urn:vetinh:drug-class"
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
ATC_SYSTEM = "http://www.whocc.no/atc"
SEVERITIES = ("contraindicated", "major", "moderate")
DRUG_COLUMNS = (
    "code",
    "name",
    "ingredients",
    "strength",
    "form",
    "route",
    "unit",
    "dose_unit",
    "dose_units_per_unit",
    "price",
    "narcotic",
    "psychotropic",
    "antibiotic",
    "atc",
    "ddd",
    "ddd_unit",
    "classes",
    "group",
)
_AMOUNT = re.compile(r"^(?P<name>.+?)\s+(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>mg|g|mcg|IU)$")


def fold(text: str) -> str:
    """Return text lower-cased without Vietnamese diacritics (đ becomes d), spaces collapsed."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.lower().split())


@dataclass(frozen=True)
class Ingredient:
    """One active ingredient and its amount per dose unit (mg, or IU for insulin)."""

    name: str
    amount: Decimal
    unit: str

    @property
    def mg(self) -> Decimal | None:
        """Return the amount in milligrams, or None for units that are not a mass."""
        factor = {"mg": Decimal(1), "g": Decimal(1000), "mcg": Decimal("0.001")}.get(self.unit)
        return self.amount * factor if factor is not None else None


@dataclass(frozen=True)
class Drug:
    """A drug of the catalogue, as the prescriber and the checks see it."""

    code: str
    name: str
    ingredients: tuple[Ingredient, ...]
    strength: str
    form: str
    route: str
    unit: str
    dose_unit: str
    dose_units_per_unit: Decimal
    price: Decimal
    narcotic: bool = False
    psychotropic: bool = False
    antibiotic: bool = False
    atc: str = ""
    ddd: Decimal | None = None
    ddd_unit: str = ""
    classes: frozenset[str] = field(default_factory=frozenset)
    group: str = ""

    @property
    def ingredient_names(self) -> frozenset[str]:
        return frozenset(i.name for i in self.ingredients)

    @property
    def prescription_type(self) -> str:
        """Return the national prescription type letter: N narcotic, H psychotropic, C other."""
        if self.narcotic:
            return "N"
        if self.psychotropic:
            return "H"
        return "C"


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "x", "có", "co"}


def _decimal(
    value: str, column: str, line: int, errors: dict[str, str], *, optional: bool = False
) -> Decimal:
    text = value.strip()
    if not text and optional:
        return Decimal(0)
    try:
        number = Decimal(text)
    except InvalidOperation:
        errors[f"line {line}: {column}"] = N_("Not a number.")
        return Decimal(0)
    if number < 0:
        errors[f"line {line}: {column}"] = N_("Must not be negative.")
    return number


def _vnd(value: str) -> str:
    """Drop Vietnamese thousands separators from a price ("1.200" is 1200 VND)."""
    text = value.strip()
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", text):
        return re.sub(r"[.,]", "", text)
    return text


def _ingredients(value: str, line: int, errors: dict[str, str]) -> tuple[Ingredient, ...]:
    found = []
    for part in value.split("|"):
        match = _AMOUNT.match(part.strip())
        if not match:
            errors[f"line {line}: ingredients"] = N_(
                "Write each ingredient as 'name 500 mg', separated by |."
            )
            return ()
        found.append(Ingredient(match["name"].strip().lower(), Decimal(match["amount"]), match["unit"]))
    return tuple(found)


def parse_drug_csv(text: str) -> list[Drug]:
    """Parse a drug catalogue CSV with the columns of ``DRUG_COLUMNS``.

    Raises ValidationFailed naming every bad line and column; nothing is returned half-read.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in ("code", "name", "ingredients", "unit") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValidationFailed(
            N_("The CSV lacks required columns."), fields={c: N_("Missing column.") for c in missing}
        )
    return parse_drug_rows(reader)


def parse_drug_rows(rows: Iterable[Mapping[str, str | None]]) -> list[Drug]:
    """Build drugs from CSV-like rows (numbered from line 2, after a header).

    Raises ValidationFailed naming every bad line and column.
    """
    errors: dict[str, str] = {}
    drugs: dict[str, Drug] = {}
    for line, raw in enumerate(rows, start=2):
        row: dict[str, str] = {k: (v or "").strip() for k, v in raw.items() if k}
        code = row.get("code", "")
        if not code or len(code) > 40:
            errors[f"line {line}: code"] = N_("A code of 1 to 40 characters is required.")
            continue
        if code in drugs:
            errors[f"line {line}: code"] = N_("This code appears twice.")
        if not row.get("name"):
            errors[f"line {line}: name"] = N_("The name is required.")
        if not row.get("unit"):
            errors[f"line {line}: unit"] = N_("The unit is required.")
        antibiotic = _flag(row.get("antibiotic", ""))
        ddd_text = row.get("ddd", "")
        ddd = _decimal(ddd_text, "ddd", line, errors) if ddd_text else None
        per_unit = _decimal(row.get("dose_units_per_unit") or "1", "dose_units_per_unit", line, errors)
        if per_unit == 0:
            errors[f"line {line}: dose_units_per_unit"] = N_("Must be more than zero.")
        drugs[code] = Drug(
            code=code,
            name=row.get("name", ""),
            ingredients=_ingredients(row.get("ingredients", ""), line, errors),
            strength=row.get("strength", ""),
            form=row.get("form", ""),
            route=row.get("route", ""),
            unit=row.get("unit", ""),
            dose_unit=row.get("dose_unit") or row.get("unit", ""),
            dose_units_per_unit=per_unit or Decimal(1),
            price=_decimal(_vnd(row.get("price", "")), "price", line, errors, optional=True),
            narcotic=_flag(row.get("narcotic", "")),
            psychotropic=_flag(row.get("psychotropic", "")),
            antibiotic=antibiotic,
            atc=row.get("atc", ""),
            ddd=ddd,
            ddd_unit=row.get("ddd_unit", ""),
            classes=frozenset(c.strip().lower() for c in row.get("classes", "").split(";") if c.strip()),
            group=row.get("group", "").strip().lower(),
        )
    if errors:
        raise ValidationFailed(N_("Some lines of the CSV are not valid."), fields=errors)
    return list(drugs.values())


@lru_cache(maxsize=1)
def seed_drugs() -> dict[str, Drug]:
    """Return the shipped seed catalogue by code."""
    text = (DATA_DIR / "drugs.csv").read_text(encoding="utf-8")
    return {drug.code: drug for drug in parse_drug_csv(text)}


@dataclass(frozen=True)
class Icd10Entry:
    """One ICD-10 code with its Vietnamese and English titles."""

    code: str
    vi: str
    en: str

    @property
    def folded(self) -> str:
        return fold(f"{self.code} {self.vi} {self.en}")


@lru_cache(maxsize=1)
def icd10_entries() -> dict[str, Icd10Entry]:
    """Return the shipped Vietnamese ICD-10 subset by code."""
    with (DATA_DIR / "icd10_vi.csv").open(encoding="utf-8", newline="") as handle:
        return {row["code"]: Icd10Entry(row["code"], row["vi"], row["en"]) for row in csv.DictReader(handle)}


def search_icd10(query: str, limit: int = 20) -> list[Icd10Entry]:
    """Find codes by code prefix or by words of the title, with or without diacritics."""
    words = fold(query).replace(",", " ").split()
    if not words:
        return []
    entries = icd10_entries().values()
    code_query = query.strip().upper()
    by_code = [e for e in entries if e.code.upper().startswith(code_query)] if len(words) == 1 else []
    by_text = [e for e in entries if e not in by_code and all(w in e.folded for w in words)]
    return (sorted(by_code, key=lambda e: e.code) + by_text)[:limit]


def icd10(code: str) -> Icd10Entry | None:
    """Return the entry of a code (case-insensitive), or None when it is not in the subset."""
    return icd10_entries().get(code.strip().upper())


@dataclass(frozen=True)
class Interaction:
    """A known drug-drug interaction between two ingredients or classes."""

    a: str
    b: str
    severity: str
    effect_vi: str
    effect_en: str
    advice_vi: str
    advice_en: str

    def text(self, locale: str) -> tuple[str, str]:
        """Return (effect, advice) in the locale (Vietnamese unless English is asked)."""
        if locale.startswith("en"):
            return self.effect_en, self.advice_en
        return self.effect_vi, self.advice_vi


@lru_cache(maxsize=1)
def interactions() -> tuple[Interaction, ...]:
    """Return the shipped interaction table."""
    with (DATA_DIR / "interactions.csv").open(encoding="utf-8", newline="") as handle:
        rows = tuple(
            Interaction(
                r["a"].strip().lower(),
                r["b"].strip().lower(),
                r["severity"].strip(),
                r["effect_vi"],
                r["effect_en"],
                r["advice_vi"],
                r["advice_en"],
            )
            for r in csv.DictReader(handle)
        )
    return rows


def drug_keys(drug: Drug) -> frozenset[str]:
    """Return what an interaction row may name for this drug: ingredients and ``class:`` keys."""
    return drug.ingredient_names | {f"class:{c}" for c in drug.classes}


def interactions_between(first: Drug, second: Drug) -> list[Interaction]:
    """Return the interactions the table knows between two drugs."""
    keys_a, keys_b = drug_keys(first), drug_keys(second)
    return [
        row
        for row in interactions()
        if (row.a in keys_a and row.b in keys_b) or (row.a in keys_b and row.b in keys_a)
    ]


@dataclass(frozen=True)
class DoseLimit:
    """Warning thresholds of one ingredient: per kg for children, absolute for adults."""

    ingredient: str
    child_mg_per_kg_dose: Decimal
    child_mg_per_kg_day: Decimal
    child_max_mg_day: Decimal
    adult_max_mg_dose: Decimal
    adult_max_mg_day: Decimal


@lru_cache(maxsize=1)
def dose_limits() -> dict[str, DoseLimit]:
    """Return the shipped dose thresholds by ingredient."""
    with (DATA_DIR / "dose_limits.csv").open(encoding="utf-8", newline="") as handle:
        return {
            r["ingredient"]: DoseLimit(
                r["ingredient"],
                Decimal(r["child_mg_per_kg_dose"]),
                Decimal(r["child_mg_per_kg_day"]),
                Decimal(r["child_max_mg_day"]),
                Decimal(r["adult_max_mg_dose"]),
                Decimal(r["adult_max_mg_day"]),
            )
            for r in csv.DictReader(handle)
        }


@dataclass(frozen=True)
class OrderableService:
    """A lab test, imaging study or pathology examination a doctor can order by code.

    The code is the hospital's price-list code, so performing the order can be charged.
    """

    code: str
    vi: str
    en: str
    category: str

    def name(self, locale: str) -> str:
        return self.en if locale.startswith("en") else self.vi


@lru_cache(maxsize=1)
def orderable_services() -> dict[str, OrderableService]:
    """Return the shipped catalogue of orderable services by code, in file order."""
    with (DATA_DIR / "services.csv").open(encoding="utf-8", newline="") as handle:
        return {
            row["code"]: OrderableService(row["code"], row["vi"], row["en"], row["category"])
            for row in csv.DictReader(handle)
        }


def orderable_service(code: str) -> OrderableService | None:
    """Return the service of a code (case-insensitive), or None when the catalogue lacks it."""
    return orderable_services().get(code.strip().upper())
