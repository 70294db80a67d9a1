"""Split each invoice line between the insurance fund (BHYT) and the patient.

Every line ends in three parts whose sum is the line's total at the hospital's price
(``THANH_TIEN_BV``):

- the fund's share (``T_BHTT``),
- the patient's co-payment on the covered cost (``T_BNCCT``),
- what the patient pays in full (``T_BNTT``): out-of-scope items, the part of the
  hospital price above the insurance price, and the part the payment ratio leaves out.

The covered cost (``THANH_TIEN_BH``) is the quantity × the insurance price × the
payment ratio. The fund pays ``covered × benefit share × referral share``, where the
benefit share is the card's level (100/95/80%) raised to 100% by the low-cost-visit rule
or the five-year co-pay exemption, and the referral share is 100% unless the patient came
on their own to another facility. Money is ``Decimal`` VND rounded half up to 2 decimals
per line (``DON_GIA`` to 3, quantities to 3), as the XML 130 tables write it.

The low-cost-visit rule compares the visit's whole covered cost with the limit (strictly
below) and applies to in-network care only. The five-year exemption looks at the
co-payments made earlier in the calendar year: once they are strictly greater than the
threshold, this visit is free of co-payment; the visit that crosses the threshold is
still charged as usual (the excess is settled with the social-insurance office).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum

from billing.bhyt import BhytCard, Referral, benefit_level, ensure_valid_on
from billing.rules import CareSetting, FacilityLevel, RuleSet, rules_on
from his.errors import N_, ValidationFailed

CENT = Decimal("0.01")
MILLI = Decimal("0.001")
DONG = Decimal("1")
HUNDRED = Decimal("100")
ZERO = Decimal("0")
ONE = Decimal("1")


class InvalidInvoiceLine(ValidationFailed):
    """A line's quantity, price or payment ratio cannot be billed."""

    code = "BILLING_INVALID_LINE"
    message = N_("An invoice line is not valid.")


class PriceMissing(InvalidInvoiceLine):
    """A line has no price; it must be priced before it is billed, never billed as zero."""

    code = "BILLING_PRICE_MISSING"
    message = N_("There is no price for this item.")


class InvalidCoverage(ValidationFailed):
    """The coverage facts given for the split are not usable."""

    code = "BILLING_INVALID_COVERAGE"
    message = N_("The insurance details of the visit are not valid.")


class Reason(StrEnum):
    """Why the fund paid more than the card's level."""

    LOW_COST_VISIT = "low_cost_visit"
    COPAY_EXEMPTION = "copay_exemption"


@dataclass(frozen=True)
class InvoiceLine:
    """One billable item: what it is, how many, at which prices, and whether BHYT covers it.

    ``insurance_unit_price`` is the price the fund recognises where it differs from the
    hospital's; ``payment_ratio`` (``TYLE_TT_BH``) is the percentage of it the fund covers.
    ``level5_covered`` marks an out-of-scope item that benefit level 5 still pays.
    """

    code: str
    description: str
    quantity: Decimal
    unit_price: Decimal | None
    insurance_unit_price: Decimal | None = None
    payment_ratio: Decimal = HUNDRED
    in_scope: bool = True
    level5_covered: bool = False


@dataclass(frozen=True)
class Coverage:
    """The insurance facts of one visit; ``card=None`` means the patient pays everything."""

    card: BhytCard | None
    referral: Referral = Referral.REGISTERED
    facility_level: FacilityLevel = FacilityLevel.PRIMARY
    care: CareSetting = CareSetting.OUTPATIENT
    five_years_continuous: bool = False
    copaid_this_year: Decimal = ZERO


@dataclass(frozen=True)
class LineSplit:
    """The split of one line: its total, covered cost, and the three parts that make the total."""

    line: InvoiceLine
    unit_price: Decimal
    total: Decimal
    covered: Decimal
    fund: Decimal
    copay: Decimal
    patient_full: Decimal

    @property
    def patient_total(self) -> Decimal:
        """Return what the patient pays for this line (co-payment plus full payment)."""
        return self.copay + self.patient_full


@dataclass(frozen=True)
class InvoiceSplit:
    """The split of a whole visit, line by line, with the rules and shares that produced it."""

    lines: tuple[LineSplit, ...]
    rules: RuleSet
    benefit_level: int | None
    benefit_share: Decimal
    referral_share: Decimal
    reasons: frozenset[Reason] = field(default_factory=frozenset)

    @property
    def total(self) -> Decimal:
        return sum((line.total for line in self.lines), ZERO)

    @property
    def covered(self) -> Decimal:
        return sum((line.covered for line in self.lines), ZERO)

    @property
    def fund(self) -> Decimal:
        return sum((line.fund for line in self.lines), ZERO)

    @property
    def copay(self) -> Decimal:
        return sum((line.copay for line in self.lines), ZERO)

    @property
    def patient_full(self) -> Decimal:
        return sum((line.patient_full for line in self.lines), ZERO)

    @property
    def patient_total(self) -> Decimal:
        """Return the patient's part of the visit (co-payments plus full payments)."""
        return self.copay + self.patient_full

    @property
    def amount_due(self) -> Decimal:
        """Return what the cashier collects: the patient's part in whole đồng."""
        return self.patient_total.quantize(DONG, rounding=ROUND_HALF_UP)

    @property
    def benefit_percent(self) -> int:
        """Return the benefit share as the whole percentage written in ``MUC_HUONG``."""
        return int((self.benefit_share * HUNDRED).to_integral_value(rounding=ROUND_HALF_UP))


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _checked_decimal(
    value: object, *, name: str, places: Decimal, error: type[ValidationFailed] = InvalidInvoiceLine
) -> Decimal:
    try:
        number = Decimal(str(value)) if not isinstance(value, Decimal) else value
        if not number.is_finite():
            raise InvalidOperation
        return number.quantize(places, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError) as exc:
        raise error(N_("Enter a number."), fields={name: N_("Enter a number.")}) from exc


def _check_line(line: InvoiceLine, index: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Return the line's quantity, price, insurance price and ratio, rounded as XML 130 writes them.

    Raises PriceMissing for a line without a price and InvalidInvoiceLine for a negative
    or zero quantity, a negative price or a ratio outside 0–100.
    """
    where = f"lines[{index}]"
    if line.unit_price is None:
        raise PriceMissing(fields={f"{where}.unit_price": line.code}, extra={"item_code": line.code})
    quantity = _checked_decimal(line.quantity, name=f"{where}.quantity", places=MILLI)
    price = _checked_decimal(line.unit_price, name=f"{where}.unit_price", places=MILLI)
    insurance_price = (
        price
        if line.insurance_unit_price is None
        else _checked_decimal(line.insurance_unit_price, name=f"{where}.insurance_unit_price", places=MILLI)
    )
    ratio = _checked_decimal(line.payment_ratio, name=f"{where}.payment_ratio", places=CENT)
    if quantity <= 0:
        message = N_("The quantity must be greater than zero.")
        raise InvalidInvoiceLine(message, fields={f"{where}.quantity": message})
    if price < 0 or insurance_price < 0:
        message = N_("A price cannot be negative.")
        raise InvalidInvoiceLine(message, fields={f"{where}.unit_price": message})
    if not ZERO <= ratio <= HUNDRED:
        message = N_("The payment ratio is a percentage from 0 to 100.")
        raise InvalidInvoiceLine(message, fields={f"{where}.payment_ratio": message})
    return quantity, price, insurance_price, ratio


def _covered_cost(
    line: InvoiceLine,
    quantity: Decimal,
    price: Decimal,
    insurance_price: Decimal,
    ratio: Decimal,
    level: int | None,
    rules: RuleSet,
) -> Decimal:
    if level is None:
        return ZERO
    if not line.in_scope:
        if line.level5_covered and level in rules.out_of_scope_paying_levels:
            return _money(quantity * price)
        return ZERO
    # The fund never pays more than the hospital charged, even where its own price is higher.
    return _money(quantity * min(price, insurance_price) * ratio / HUNDRED)


def _referral_share(coverage: Coverage, rules: RuleSet) -> Decimal:
    if coverage.referral is not Referral.SELF_REFERRED:
        return ONE
    return rules.self_referral_rates[(coverage.facility_level, coverage.care)]


def split_invoice(
    lines: Iterable[InvoiceLine], coverage: Coverage, visit_date: date, *, rules: RuleSet | None = None
) -> InvoiceSplit:
    """Split every line of a visit between the fund and the patient by the rules of ``visit_date``.

    Raises CardExpired when the card does not cover the visit date, PriceMissing or
    InvalidInvoiceLine for a line that cannot be billed, InvalidCoverage for a negative
    running co-payment, and NoRuleInForce when no rule covers the date.
    """
    rules = rules or rules_on(visit_date)
    items = list(lines)
    checked = [_check_line(line, index) for index, line in enumerate(items)]
    copaid = _checked_decimal(
        coverage.copaid_this_year, name="copaid_this_year", places=CENT, error=InvalidCoverage
    )
    if copaid < 0:
        message = N_("The co-payments made this year cannot be negative.")
        raise InvalidCoverage(message, fields={"copaid_this_year": message})

    level: int | None = None
    benefit_share = ZERO
    referral_share = ZERO
    reasons: set[Reason] = set()
    if coverage.card is not None:
        ensure_valid_on(coverage.card, visit_date)
        level = benefit_level(coverage.card, rules)
        benefit_share = rules.benefit_rates[level]
        referral_share = _referral_share(coverage, rules)

    covered = [
        _covered_cost(line, quantity, price, insurance_price, ratio, level, rules)
        for line, (quantity, price, insurance_price, ratio) in zip(items, checked, strict=True)
    ]
    if level is not None:
        visit_covered = sum(covered, ZERO)
        # The low-cost rule is a benefit of in-network care; self-referred visits keep their share.
        if coverage.referral is not Referral.SELF_REFERRED and visit_covered < rules.low_cost_visit_limit:
            reasons.add(Reason.LOW_COST_VISIT)
        # "Greater than", not "at least": a year's co-payments equal to the threshold do not free the rest.
        if coverage.five_years_continuous and copaid > rules.copay_exemption_threshold:
            reasons.add(Reason.COPAY_EXEMPTION)
        if reasons:
            benefit_share = ONE

    fund_share = benefit_share * referral_share
    splits: list[LineSplit] = []
    for line, (quantity, price, _insurance_price, _ratio), line_covered in zip(
        items, checked, covered, strict=True
    ):
        total = _money(quantity * price)
        fund = _money(line_covered * fund_share)
        splits.append(
            LineSplit(
                line=line,
                unit_price=price,
                total=total,
                covered=line_covered,
                fund=fund,
                copay=line_covered - fund,
                patient_full=total - line_covered,
            )
        )
    return InvoiceSplit(
        lines=tuple(splits),
        rules=rules,
        benefit_level=level,
        benefit_share=benefit_share,
        referral_share=referral_share,
        reasons=frozenset(reasons),
    )
