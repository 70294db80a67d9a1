"""Hold every BHYT rate, base salary and code list as data keyed by the date it took effect.

Rules change by date, so nothing in ``bhyt`` or ``copay`` hard-codes a figure: they ask
``rules_on(visit_date)`` for the rule set in force on the day of the visit. Each table is
a tuple of ``Dated`` entries, oldest first; an entry holds until the next one starts.
The certainty of each figure (see VIETNAM.md) is noted beside it; uncertain figures are
exactly the ones a deployment may override with ``RuleSet.with_overrides``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from his.errors import N_, ConfigurationError
from his.identifiers import CCCD_PROVINCE_CODES

T = TypeVar("T")


class FacilityLevel(StrEnum):
    """The technical level of the treating facility (the 2025 law's names for the old tuyến)."""

    PRIMARY = "primary"  # cấp ban đầu: commune and district
    BASIC = "basic"  # cấp cơ bản: most provincial hospitals
    SPECIALIZED = "specialized"  # cấp chuyên sâu: central hospitals


class CareSetting(StrEnum):
    """Whether the visit is outpatient or inpatient care."""

    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"


@dataclass(frozen=True)
class Dated(Generic[T]):
    """A value that is in force from ``since`` until the next entry of its table starts."""

    since: date
    value: T
    certainty: str = "solid"


class NoRuleInForce(ConfigurationError):
    """No entry of a rule table covers the requested date."""

    code = "BILLING_NO_RULE"
    message = N_("No billing rule is configured for this date.")


def value_on(table: tuple[Dated[T], ...], day: date, *, name: str) -> T:
    """Return the value of ``table`` in force on ``day``.

    Raises NoRuleInForce when ``day`` is before the table's first entry.
    """
    current: Dated[T] | None = None
    for entry in table:
        if entry.since <= day:
            current = entry
        else:
            break
    if current is None:
        raise NoRuleInForce(fields={name: day.isoformat()})
    return current.value


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


BASE_SALARY: tuple[Dated[Decimal], ...] = (
    Dated(date(2019, 7, 1), Decimal("1490000")),  # Nghị định 38/2019
    Dated(date(2023, 7, 1), Decimal("1800000")),
    Dated(date(2024, 7, 1), Decimal("2340000")),
    Dated(date(2026, 7, 1), Decimal("2530000"), certainty="uncertain"),
)

# Share of the covered cost the fund pays, by the benefit digit (third character of the card).
BENEFIT_RATES: tuple[Dated[Mapping[int, Decimal]], ...] = (
    Dated(
        date(2015, 1, 1),
        _frozen(
            {
                1: Decimal("1.00"),
                2: Decimal("1.00"),
                3: Decimal("0.95"),
                4: Decimal("0.80"),
                5: Decimal("1.00"),
            }
        ),
    ),
)

# Beneficiary groups whose benefit level is set by rule rather than by the printed digit.
GROUP_BENEFIT_LEVELS: tuple[Dated[Mapping[str, int]], ...] = (
    Dated(date(2015, 1, 1), _frozen({})),
    Dated(date(2026, 1, 1), _frozen({"CN": 2, "LH": 2}), certainty="likely"),
)

# Benefit levels whose fund also pays listed out-of-scope costs (QN, CA, CY).
OUT_OF_SCOPE_PAYING_LEVELS: tuple[Dated[frozenset[int]], ...] = (Dated(date(2015, 1, 1), frozenset({5})),)

# A visit whose covered cost is below this share of the base salary is paid 100%.
LOW_COST_VISIT_SHARE: tuple[Dated[Decimal], ...] = (
    Dated(date(2015, 1, 1), Decimal("0.15"), certainty="likely"),
)

# After five consecutive years of coverage, co-payments in a calendar year greater than
# this many base salaries make the rest of the year free.
COPAY_EXEMPTION_BASE_SALARIES: tuple[Dated[Decimal], ...] = (Dated(date(2015, 1, 1), Decimal("6")),)

# Share of the benefit the fund still pays when the patient comes without a referral to a
# facility other than the registered one (not an emergency).
SELF_REFERRAL_RATES: tuple[Dated[Mapping[tuple[FacilityLevel, CareSetting], Decimal]], ...] = (
    Dated(
        date(2021, 1, 1),
        _frozen(
            {
                (FacilityLevel.PRIMARY, CareSetting.OUTPATIENT): Decimal("1.00"),
                (FacilityLevel.PRIMARY, CareSetting.INPATIENT): Decimal("1.00"),
                (FacilityLevel.BASIC, CareSetting.OUTPATIENT): Decimal("0"),
                (FacilityLevel.BASIC, CareSetting.INPATIENT): Decimal("1.00"),
                (FacilityLevel.SPECIALIZED, CareSetting.OUTPATIENT): Decimal("0"),
                (FacilityLevel.SPECIALIZED, CareSetting.INPATIENT): Decimal("0.40"),
            }
        ),
    ),
    Dated(
        date(2026, 7, 1),
        _frozen(
            {
                (FacilityLevel.PRIMARY, CareSetting.OUTPATIENT): Decimal("1.00"),
                (FacilityLevel.PRIMARY, CareSetting.INPATIENT): Decimal("1.00"),
                (FacilityLevel.BASIC, CareSetting.OUTPATIENT): Decimal("0.50"),
                (FacilityLevel.BASIC, CareSetting.INPATIENT): Decimal("1.00"),
                (FacilityLevel.SPECIALIZED, CareSetting.OUTPATIENT): Decimal("0.50"),
                (FacilityLevel.SPECIALIZED, CareSetting.INPATIENT): Decimal("0.40"),
            }
        ),
        certainty="uncertain",
    ),
)

# Issuing provinces (characters 4–5 of the card): the pre-2025 two-digit province codes,
# which are also the last two digits of the CCCD birth-registration prefixes, plus the
# social-insurance offices of the Ministry of Defence (97) and of Public Security (98).
BHYT_PROVINCE_CODES: tuple[Dated[frozenset[str]], ...] = (
    Dated(
        date(2015, 1, 1),
        frozenset({code[1:] for code in CCCD_PROVINCE_CODES} | {"97", "98"}),
        certainty="likely",
    ),
)


@dataclass(frozen=True)
class RuleSet:
    """The BHYT rules in force on one day, as plain values."""

    day: date
    base_salary: Decimal
    benefit_rates: Mapping[int, Decimal]
    group_benefit_levels: Mapping[str, int]
    out_of_scope_paying_levels: frozenset[int]
    low_cost_visit_share: Decimal
    copay_exemption_base_salaries: Decimal
    self_referral_rates: Mapping[tuple[FacilityLevel, CareSetting], Decimal]
    province_codes: frozenset[str] = field(repr=False)

    @property
    def low_cost_visit_limit(self) -> Decimal:
        """Return the visit cost below which the fund pays 100% (15% of the base salary)."""
        return self.base_salary * self.low_cost_visit_share

    @property
    def copay_exemption_threshold(self) -> Decimal:
        """Return the yearly co-payment that, once exceeded, frees the rest of the year."""
        return self.base_salary * self.copay_exemption_base_salaries

    def with_overrides(self, **changes: Any) -> RuleSet:
        """Return a copy with some rules replaced (a deployment's settings for uncertain rules).

        Raises TypeError for a name that is not a rule.
        """
        return dataclasses.replace(self, **changes)


def rules_on(day: date) -> RuleSet:
    """Return the rule set in force on ``day``.

    Raises NoRuleInForce when a table has no entry that early.
    """
    return RuleSet(
        day=day,
        base_salary=value_on(BASE_SALARY, day, name="base_salary"),
        benefit_rates=value_on(BENEFIT_RATES, day, name="benefit_rates"),
        group_benefit_levels=value_on(GROUP_BENEFIT_LEVELS, day, name="group_benefit_levels"),
        out_of_scope_paying_levels=value_on(
            OUT_OF_SCOPE_PAYING_LEVELS, day, name="out_of_scope_paying_levels"
        ),
        low_cost_visit_share=value_on(LOW_COST_VISIT_SHARE, day, name="low_cost_visit_share"),
        copay_exemption_base_salaries=value_on(
            COPAY_EXEMPTION_BASE_SALARIES, day, name="copay_exemption_base_salaries"
        ),
        self_referral_rates=value_on(SELF_REFERRAL_RATES, day, name="self_referral_rates"),
        province_codes=value_on(BHYT_PROVINCE_CODES, day, name="province_codes"),
    )
