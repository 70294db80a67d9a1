"""Understand doses as Vietnamese doctors write them and apply the prescription's limits.

``parse_dosage("sáng 1 viên, chiều 1 viên")`` gives two administrations a day of one
unit; ``quantity`` turns a dosage and a number of days into what the pharmacy hands
over. Everything here is pure: no session, no request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from his.errors import N_, ValidationFailed
from his.records.catalogue import Drug, fold

MAX_DAYS = 30
MAX_DAYS_NARCOTIC = 7
CHILD_MONTHS = 72

SLOTS = {
    "sang": "morning",
    "trua": "noon",
    "chieu": "afternoon",
    "toi": "evening",
    "dem": "night",
    "khuya": "night",
}
_NUMBER = r"(?:\d+\s*/\s*\d+|\d+(?:[.,]\d+)?|nua|mot|hai|ba)"
_UNIT = r"(?P<unit>[a-z]+(?:\s+xit)?)?"
_SLOT = re.compile(rf"\b(?P<slot>sang|trua|chieu|toi|dem|khuya)\s*:?\s*(?P<amount>{_NUMBER})\s*{_UNIT}")
_TIMES = r"(?P<times>\d+)\s*lan\s*(?:/|mot|moi|trong)?\s*ngay"
_FREQ_PATTERNS = (
    re.compile(rf"ngay\s*(?P<times>\d+)\s*lan\W+(?:moi\s*lan\s*)?(?P<amount>{_NUMBER})\s*{_UNIT}"),
    re.compile(rf"(?:moi\s*lan\s*)?(?P<amount>{_NUMBER})\s*{_UNIT}\s*[x×*]\s*{_TIMES}"),
    re.compile(
        rf"moi\s*lan\s*(?P<amount>{_NUMBER})\s*{_UNIT}\W+(?:ngay\s*)?{_TIMES.replace('ngay', '(?:ngay)?')}"
    ),
    re.compile(rf"{_TIMES}\W+(?:moi\s*lan\s*)?(?P<amount>{_NUMBER})\s*{_UNIT}"),
)
_WORDS = {"nua": Decimal("0.5"), "mot": Decimal(1), "hai": Decimal(2), "ba": Decimal(3)}
_NOT_UNITS = {"va", "lan", "ngay", "x", "moi", "sau", "truoc", "khi", "an", "uong", "luc"}


@dataclass(frozen=True)
class Dosage:
    """How much is taken at each administration in a day, in the drug's dose unit."""

    administrations: tuple[tuple[str | None, Decimal], ...]
    unit: str | None
    text: str

    @property
    def per_day(self) -> Decimal:
        return sum((amount for _slot, amount in self.administrations), Decimal(0))

    @property
    def largest_dose(self) -> Decimal:
        return max(amount for _slot, amount in self.administrations)

    @property
    def times_per_day(self) -> int:
        return len(self.administrations)


class DosageNotUnderstood(ValueError):
    """The dosing text does not say how much to take and how often."""


def _amount(raw: str) -> Decimal:
    raw = raw.replace(" ", "")
    if raw in _WORDS:
        return _WORDS[raw]
    if "/" in raw:
        top, bottom = raw.split("/")
        if int(bottom) == 0:
            raise DosageNotUnderstood(raw)
        return Decimal(top) / Decimal(bottom)
    try:
        return Decimal(raw.replace(",", "."))
    except InvalidOperation as exc:
        raise DosageNotUnderstood(raw) from exc


def _unit(raw: str | None) -> str | None:
    if not raw or raw.split()[0] in _NOT_UNITS:
        return None
    return raw


def parse_dosage(text: str) -> Dosage:
    """Read "sáng 1 viên, chiều 1 viên" or "ngày 3 lần, mỗi lần 5 ml" (diacritics optional).

    Raises DosageNotUnderstood when the text gives no amount and frequency, or a zero dose.
    """
    folded = fold(text)
    slots = list(_SLOT.finditer(folded))
    administrations: list[tuple[str | None, Decimal]] = []
    unit: str | None = None
    if slots:
        for match in slots:
            administrations.append((SLOTS[match["slot"]], _amount(match["amount"])))
            unit = unit or _unit(match["unit"])
    else:
        for pattern in _FREQ_PATTERNS:
            found = pattern.search(folded)
            if found:
                times = int(found["times"])
                if times < 1 or times > 24:
                    raise DosageNotUnderstood(text)
                amount = _amount(found["amount"])
                administrations = [(None, amount)] * times
                unit = _unit(found["unit"])
                break
    if not administrations or any(amount <= 0 for _slot, amount in administrations):
        raise DosageNotUnderstood(text)
    return Dosage(tuple(administrations), unit, " ".join(text.split()))


def quantity(dosage: Dosage, days: int, drug: Drug) -> Decimal:
    """Return how many dispensing units cover ``days`` of this dosage (rounded up)."""
    total_dose_units = dosage.per_day * days
    units = (total_dose_units / drug.dose_units_per_unit).to_integral_value(rounding=ROUND_CEILING)
    return max(units, Decimal(1))


def unit_matches(dosage: Dosage, drug: Drug) -> bool:
    """Tell whether the unit written in the dosage, if any, is the drug's dose unit."""
    if dosage.unit is None:
        return True
    return dosage.unit.split()[0] == fold(drug.dose_unit).split()[0]


def max_days(drugs: list[Drug]) -> int:
    """Return the longest duration allowed for a prescription holding these drugs."""
    return MAX_DAYS_NARCOTIC if any(d.narcotic for d in drugs) else MAX_DAYS


def age_in_months(birth_date: date, on: date) -> int:
    """Return completed months of age on a day."""
    months = (on.year - birth_date.year) * 12 + on.month - birth_date.month
    if on.day < birth_date.day:
        months -= 1
    return max(months, 0)


@dataclass(frozen=True)
class PatientFacts:
    """What the prescription rules need to know about the patient."""

    birth_date: date | None
    weight_kg: Decimal | None = None
    guardian_name: str | None = None

    def age_months(self, on: date) -> int | None:
        return age_in_months(self.birth_date, on) if self.birth_date else None

    def is_child(self, on: date) -> bool:
        """Tell whether the paediatric dose table applies (under 18 years)."""
        months = self.age_months(on)
        return months is not None and months < 18 * 12


def check_rules(drugs: list[Drug], days: int, patient: PatientFacts, on: date) -> None:
    """Apply the national limits a prescription must meet before it can be saved.

    Raises ValidationFailed naming the field: days beyond 30 (7 with a narcotic), a
    child under 72 months without weight or accompanying adult, no birth date.
    """
    errors: dict[str, str] = {}
    if days < 1:
        errors["days"] = N_("Prescribe at least one day.")
    elif days > max_days(drugs):
        if any(d.narcotic for d in drugs):
            errors["days"] = N_("A prescription with a narcotic may cover at most 7 days.")
        else:
            errors["days"] = N_("A prescription may cover at most 30 days.")
    months = patient.age_months(on)
    if months is None:
        errors["birth_date"] = N_("The patient's date of birth is needed to prescribe.")
    elif months < CHILD_MONTHS:
        if patient.weight_kg is None or patient.weight_kg <= 0:
            errors["weight"] = N_("A child under 72 months needs a weight on the prescription.")
        if not (patient.guardian_name or "").strip():
            errors["guardian_name"] = N_("A child under 72 months needs the accompanying adult's name.")
    if errors:
        raise ValidationFailed(N_("The prescription breaks a prescribing rule."), fields=errors)
