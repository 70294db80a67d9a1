"""Validate Vietnamese personal identifiers (CCCD) as the national rules define them."""

from __future__ import annotations

from datetime import date

from his.errors import N_

NATIONAL_ID_SYSTEM = "http://fhir.ehealth.gov.vn/core/sid/national_id"

# Province codes of birth registration used in CCCD numbers (001–096; not every number is used).
CCCD_PROVINCE_CODES: frozenset[str] = frozenset(
    {
        "001", "002", "004", "006", "008", "010", "011", "012", "014", "015", "017", "019",
        "020", "022", "024", "025", "026", "027", "030", "031", "033", "034", "035", "036",
        "037", "038", "040", "042", "044", "045", "046", "048", "049", "051", "052", "054",
        "056", "058", "060", "062", "064", "066", "067", "068", "070", "072", "074", "075",
        "077", "079", "080", "082", "083", "084", "086", "087", "089", "091", "092", "093",
        "094", "095", "096",
    }
)  # fmt: skip

_CENTURY_BASE = {0: 1900, 2: 2000, 4: 2100, 6: 2200, 8: 2300}


class InvalidNationalId(ValueError):
    """The CCCD number is malformed or does not agree with the person's data."""


def validate_cccd(number: str, *, birth_date: date | None = None, sex: str | None = None) -> str:
    """Check a 12-digit CCCD number and return it normalised.

    The number is ``PPP G YY RRRRRR``: province of birth registration, a digit for
    century and sex, the last two digits of the birth year, six random digits.

    Raises InvalidNationalId with a message saying which part is wrong.
    """
    value = number.strip().replace(" ", "")
    if len(value) != 12 or not value.isdigit():
        raise InvalidNationalId(N_("A CCCD number has exactly 12 digits."))
    if value[:3] not in CCCD_PROVINCE_CODES:
        raise InvalidNationalId(N_("The first three digits are not a known province code."))
    gender_digit = int(value[3])
    century = _CENTURY_BASE[gender_digit - gender_digit % 2]
    is_female = gender_digit % 2 == 1
    year = century + int(value[4:6])
    if birth_date is not None and birth_date.year != year:
        raise InvalidNationalId(N_("The century and year digits do not match the date of birth."))
    if sex in {"male", "female"} and (sex == "female") != is_female:
        raise InvalidNationalId(N_("The sex digit does not match the sex given."))
    return value
