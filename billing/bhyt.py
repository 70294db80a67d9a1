"""Read and check a BHYT health-insurance card: its code, benefit level, province, dates and facility.

The card code is 15 characters, ``GG D PP NNNNNNNNNN``: a two-letter beneficiary group, the
benefit digit 1–5, the two-digit issuing province and the ten-digit social-insurance
number. Errors carry the insurance gateway's own result codes (051 bad code, 052 bad
province, 053 bad benefit digit, 010 expired) so that a desk clerk sees the same reason
whether the card was checked here or by the gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from billing.rules import BHYT_PROVINCE_CODES, RuleSet
from his.errors import N_, ValidationFailed

INSURANCE_NUMBER_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"
CARD_CODE_PATTERN = re.compile(r"^[A-Z]{2}[1-5][0-9]{2}[0-9]{10}$")
FACILITY_CODE_PATTERN = re.compile(r"^[0-9A-Z]{5}$")


class InvalidCard(ValidationFailed):
    """The card cannot be used; ``gateway_code`` is the insurance gateway's result code."""

    code = "BHYT_INVALID_CARD"
    message = N_("The health-insurance card code is not valid.")
    gateway_code = "051"

    def __init__(self, message: str | None = None, *, field: str = "card_number", value: str = "") -> None:
        text = message or self.message
        super().__init__(
            text, fields={field: text}, extra={"gateway_code": self.gateway_code, "value": value}
        )


class CardCodeMalformed(InvalidCard):
    code = "BHYT_CARD_CODE"
    gateway_code = "051"


class CardProvinceInvalid(InvalidCard):
    code = "BHYT_CARD_PROVINCE"
    message = N_("Characters 4–5 of the card code are not a known issuing province.")
    gateway_code = "052"


class CardBenefitInvalid(InvalidCard):
    code = "BHYT_CARD_BENEFIT"
    message = N_("Character 3 of the card code (the benefit level) must be a digit from 1 to 5.")
    gateway_code = "053"


class CardExpired(InvalidCard):
    code = "BHYT_CARD_EXPIRED"
    message = N_("The card is not valid on the date of the visit.")
    gateway_code = "010"


class FacilityCodeInvalid(InvalidCard):
    code = "BHYT_FACILITY_CODE"
    message = N_("A facility code has exactly 5 letters or digits.")
    gateway_code = "051"


class Referral(StrEnum):
    """How the patient came to this facility, which decides the referral rules."""

    REGISTERED = "registered"  # this is the facility on the card
    REFERRED = "referred"  # sent here with a referral letter
    EMERGENCY = "emergency"  # paid at any facility
    SELF_REFERRED = "self_referred"  # came on their own to another facility


@dataclass(frozen=True)
class BhytCard:
    """A checked BHYT card: its code, the parts of the code, its dates and registered facility."""

    code: str
    valid_from: date | None = None
    valid_to: date | None = None
    registered_facility: str | None = None

    @property
    def group(self) -> str:
        """Return the beneficiary group (``DN``, ``HT``, ``TE``…)."""
        return self.code[:2]

    @property
    def benefit_digit(self) -> int:
        """Return the benefit digit printed on the card."""
        return int(self.code[2])

    @property
    def province(self) -> str:
        """Return the two-digit code of the issuing province."""
        return self.code[3:5]

    @property
    def social_insurance_number(self) -> str:
        """Return the ten-digit social-insurance number (also the patient's lifelong BHXH number)."""
        return self.code[5:]

    def is_valid_on(self, day: date) -> bool:
        """Tell whether ``day`` lies within the card's validity dates (both ends included)."""
        if self.valid_from is not None and day < self.valid_from:
            return False
        return not (self.valid_to is not None and day > self.valid_to)


def normalize_card_code(code: str) -> str:
    """Return the card code in upper case without the spaces and dashes printed on cards."""
    return re.sub(r"[\s\-.]", "", code).upper()


def validate_card_code(code: str, *, rules: RuleSet | None = None) -> str:
    """Check a card code and return it normalised.

    Raises CardCodeMalformed (051) for a wrong length, group or social-insurance number,
    CardBenefitInvalid (053) for a bad benefit digit and CardProvinceInvalid (052) for an
    unknown issuing province.
    """
    value = normalize_card_code(code)
    if len(value) != 15:
        raise CardCodeMalformed(N_("A health-insurance card code has exactly 15 characters."), value=value)
    if not re.fullmatch(r"[A-Z]{2}", value[:2]):
        raise CardCodeMalformed(
            N_("The first two characters of the card code (the beneficiary group) must be letters."),
            value=value,
        )
    if value[2] not in "12345":
        raise CardBenefitInvalid(value=value)
    province = value[3:5]
    known = rules.province_codes if rules is not None else BHYT_PROVINCE_CODES[-1].value
    if not province.isdigit() or province not in known:
        raise CardProvinceInvalid(value=value)
    if not value[5:].isdigit():
        raise CardCodeMalformed(
            N_("The last 10 characters of the card code (the social-insurance number) must be digits."),
            value=value,
        )
    return value


def validate_facility_code(code: str) -> str:
    """Check a 5-character facility code (mã cơ sở KCB) and return it normalised.

    Raises FacilityCodeInvalid when it is not 5 letters or digits.
    """
    value = code.strip().upper()
    if not FACILITY_CODE_PATTERN.fullmatch(value):
        raise FacilityCodeInvalid(field="registered_facility", value=value)
    return value


def read_card(
    code: str,
    *,
    valid_from: date | None = None,
    valid_to: date | None = None,
    registered_facility: str | None = None,
    rules: RuleSet | None = None,
) -> BhytCard:
    """Check every part of a card as entered at the desk and return it.

    Raises InvalidCard (a subclass naming the gateway code) for a bad code or facility,
    and when the validity dates are in the wrong order.
    """
    checked = validate_card_code(code, rules=rules)
    facility = validate_facility_code(registered_facility) if registered_facility else None
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        raise InvalidCard(
            N_("The card's end date is before its start date."), field="valid_to", value=valid_to.isoformat()
        )
    return BhytCard(code=checked, valid_from=valid_from, valid_to=valid_to, registered_facility=facility)


def ensure_valid_on(card: BhytCard, day: date) -> None:
    """Check that the card covers ``day``.

    Raises CardExpired (010) when the visit falls outside the card's validity dates.
    """
    if not card.is_valid_on(day):
        raise CardExpired(field="valid_to", value=day.isoformat())


def benefit_level(card: BhytCard, rules: RuleSet) -> int:
    """Return the benefit level that applies on the rules' day (a group move overrides the digit)."""
    return rules.group_benefit_levels.get(card.group, card.benefit_digit)


def benefit_rate(card: BhytCard, rules: RuleSet) -> Decimal:
    """Return the share of the covered cost the fund pays for this card's benefit level."""
    return rules.benefit_rates[benefit_level(card, rules)]


def referral_status(
    card: BhytCard, *, facility_code: str, emergency: bool = False, has_referral: bool = False
) -> Referral:
    """Decide how the patient came to ``facility_code``, from the card's registered facility."""
    if emergency:
        return Referral.EMERGENCY
    if card.registered_facility is not None and card.registered_facility == facility_code.strip().upper():
        return Referral.REGISTERED
    if has_referral:
        return Referral.REFERRED
    return Referral.SELF_REFERRED


def facility_province(facility_code: str) -> str:
    """Return the province part (the first two characters) of a facility code."""
    return facility_code[:2]
