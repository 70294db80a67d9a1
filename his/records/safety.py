"""Check a prescription locally: allergies, interactions, duplicate therapy and doses.

Each finding is a ``SafetyWarning`` with a stable ``key``: signing is refused until
every warning has an override reason, and the warning with its reason is stored as a
FHIR DetectedIssue. Pure functions: the caller gathers the patient's allergies and
current medicines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from itertools import combinations

from his.errors import N_
from his.records.catalogue import Drug, dose_limits, drug_keys, interactions_between
from his.records.dosing import Dosage, PatientFacts

# DetectedIssue.code from HL7 v3 ActCode.
ISSUE_CODES = {
    "allergy": ("DRG", "ALGY", "Allergy Alert"),
    "interaction": ("DRG", "DRG", "Drug Interaction Alert"),
    "duplicate": ("DRG", "DUPTHPY", "Duplicate Therapy Alert"),
    "dose": ("DRG", "DOSEH", "High Dose Alert"),
}
FHIR_SEVERITY = {"contraindicated": "high", "major": "high", "moderate": "moderate", "high": "high"}


@dataclass(frozen=True)
class PlannedItem:
    """One line of a prescription as the checks see it."""

    drug: Drug
    dosage: Dosage


@dataclass(frozen=True)
class Allergy:
    """A recorded allergy: a substance key (ingredient, or ``class:<name>``) and its label."""

    key: str
    label: str


@dataclass(frozen=True)
class SafetyWarning:
    """One finding that blocks signing until it is overridden with a reason."""

    key: str
    kind: str
    severity: str
    drugs: tuple[str, ...]
    message: str
    params: tuple[tuple[str, str], ...] = ()
    advice: str = ""

    def render(self, translate: Callable[[str], str] | None = None) -> str:
        """Return the message filled in, translated first when a translator is given."""
        template = translate(self.message) if translate else self.message
        return template % dict(self.params)


def _allergy_warnings(items: list[PlannedItem], allergies: list[Allergy]) -> list[SafetyWarning]:
    found = []
    for item in items:
        keys = drug_keys(item.drug)
        for allergy in allergies:
            if allergy.key in keys:
                via = allergy.key.removeprefix("class:")
                found.append(
                    SafetyWarning(
                        key=f"allergy:{item.drug.code}:{allergy.key}",
                        kind="allergy",
                        severity="high",
                        drugs=(item.drug.code,),
                        message=N_("%(drug)s: the patient is allergic to %(allergy)s (%(via)s)"),
                        params=(("drug", item.drug.name), ("allergy", allergy.label), ("via", via)),
                    )
                )
    return found


def _interaction_warnings(items: list[PlannedItem], current: list[Drug], locale: str) -> list[SafetyWarning]:
    found = []
    pairs = list(combinations([i.drug for i in items], 2))
    pairs += [(i.drug, other) for i in items for other in current if other.code != i.drug.code]
    seen: set[tuple[str, str]] = set()
    for first, second in pairs:
        pair = tuple(sorted((first.code, second.code)))
        if pair in seen:
            continue
        for row in interactions_between(first, second):
            seen.add(pair)  # type: ignore[arg-type]
            effect, advice = row.text(locale)
            found.append(
                SafetyWarning(
                    key=f"interaction:{pair[0]}+{pair[1]}",
                    kind="interaction",
                    severity=row.severity,
                    drugs=pair,
                    message=N_("%(first)s + %(second)s: %(effect)s"),
                    params=(("first", first.name), ("second", second.name), ("effect", effect)),
                    advice=advice,
                )
            )
            break
    return found


def _duplicate_warnings(items: list[PlannedItem]) -> list[SafetyWarning]:
    found = []
    for a, b in combinations([i.drug for i in items], 2):
        shared = a.ingredient_names & b.ingredient_names
        if shared or (a.group and a.group == b.group):
            pair = tuple(sorted((a.code, b.code)))
            what = ", ".join(sorted(shared)) if shared else a.group
            found.append(
                SafetyWarning(
                    key=f"duplicate:{pair[0]}+{pair[1]}",
                    kind="duplicate",
                    severity="moderate",
                    drugs=pair,
                    message=N_("%(first)s + %(second)s: duplicate therapy (%(what)s)"),
                    params=(("first", a.name), ("second", b.name), ("what", what)),
                )
            )
    return found


def _fmt(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')).normalize():f}"


def _dose_warnings(items: list[PlannedItem], patient: PatientFacts, on: date) -> list[SafetyWarning]:
    limits = dose_limits()
    child = patient.is_child(on)
    weight = patient.weight_kg if patient.weight_kg and patient.weight_kg > 0 else None
    per_ingredient_day: dict[str, Decimal] = {}
    found: list[SafetyWarning] = []
    for item in items:
        for ingredient in item.drug.ingredients:
            mg = ingredient.mg
            limit = limits.get(ingredient.name)
            if mg is None or limit is None:
                continue
            dose = mg * item.dosage.largest_dose
            day = mg * item.dosage.per_day
            per_ingredient_day[ingredient.name] = per_ingredient_day.get(ingredient.name, Decimal(0)) + day
            if child and weight is not None:
                max_dose = min(limit.child_mg_per_kg_dose * weight, limit.adult_max_mg_dose)
            else:
                max_dose = limit.adult_max_mg_dose
            if dose > max_dose:
                found.append(
                    SafetyWarning(
                        key=f"dose:{item.drug.code}:{ingredient.name}:single",
                        kind="dose",
                        severity="high",
                        drugs=(item.drug.code,),
                        message=N_(
                            "%(drug)s: %(ingredient)s %(dose)s mg per dose exceeds the maximum of %(max)s mg"
                        ),
                        params=(
                            ("drug", item.drug.name),
                            ("ingredient", ingredient.name),
                            ("dose", _fmt(dose)),
                            ("max", _fmt(max_dose)),
                        ),
                    )
                )
    for name, day in per_ingredient_day.items():
        limit = limits[name]
        if child and weight is not None:
            max_day = min(limit.child_mg_per_kg_day * weight, limit.child_max_mg_day)
        else:
            max_day = limit.adult_max_mg_day
        if day > max_day:
            codes = tuple(sorted(i.drug.code for i in items if name in i.drug.ingredient_names))
            found.append(
                SafetyWarning(
                    key=f"dose:{name}:day",
                    kind="dose",
                    severity="high",
                    drugs=codes,
                    message=N_("%(ingredient)s %(dose)s mg per day exceeds the maximum of %(max)s mg"),
                    params=(("ingredient", name), ("dose", _fmt(day)), ("max", _fmt(max_day))),
                )
            )
    return found


def check_prescription(
    items: list[PlannedItem],
    patient: PatientFacts,
    *,
    allergies: list[Allergy] | tuple[Allergy, ...] = (),
    current: list[Drug] | tuple[Drug, ...] = (),
    on: date,
    locale: str = "vi",
) -> list[SafetyWarning]:
    """Run every check and return the warnings in a stable order (raises nothing)."""
    return [
        *_allergy_warnings(items, list(allergies)),
        *_interaction_warnings(items, list(current), locale),
        *_duplicate_warnings(items),
        *_dose_warnings(items, patient, on),
    ]


def missing_overrides(warnings: list[SafetyWarning], reasons: dict[str, str]) -> list[SafetyWarning]:
    """Return the warnings that still lack an override reason (blank reasons do not count)."""
    return [w for w in warnings if len((reasons.get(w.key) or "").strip()) < 3]
