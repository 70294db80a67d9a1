"""Make and read national prescription codes: ``xxxxxyyyyyyy-z``.

Five characters of facility code, seven random characters ``[0-9a-z]`` unique within
the facility (never sequential), a dash and the type: N narcotic, H psychotropic or
precursor, C other, T traditional decoction. Older clients write the type in lower
case (and ``y`` for traditional medicine); both are accepted, upper case is emitted.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

from his.errors import N_, ValidationFailed

ALPHABET = string.digits + string.ascii_lowercase
TYPES = ("N", "H", "C", "T")
LEGACY_TYPES = {"y": "T"}
_CODE = re.compile(r"^(?P<facility>[0-9A-Za-z]{5})(?P<random>[0-9A-Za-z]{7})-(?P<type>[NHCTnhcty])$")


@dataclass(frozen=True)
class PrescriptionCode:
    """A prescription code split into its parts."""

    facility: str
    random: str
    type: str

    def __str__(self) -> str:
        return f"{self.facility}{self.random}-{self.type}"


def parse_code(text: str) -> PrescriptionCode:
    """Read a code as printed or typed (spaces trimmed, any case).

    Raises ValidationFailed when it is not a prescription code.
    """
    match = _CODE.match(text.strip())
    if not match:
        raise ValidationFailed(
            N_("This is not a prescription code."),
            code="PRESCRIPTION_CODE_INVALID",
            fields={"code": N_("Expected 5 characters of facility, 7 characters, a dash and N, H, C or T.")},
        )
    kind = match["type"]
    kind = LEGACY_TYPES.get(kind, kind.upper())
    return PrescriptionCode(match["facility"].upper(), match["random"].lower(), kind)


def prescription_type(letters: list[str]) -> str:
    """Return the type of a prescription from its drugs' letters (N before H before C)."""
    for kind in ("N", "H", "T"):
        if kind in letters:
            return kind
    return "C"


def new_code(facility_code: str, kind: str, taken: Callable[[str], bool]) -> PrescriptionCode:
    """Draw a random code for the facility that ``taken`` says is not used yet.

    Raises ValidationFailed for a facility code that is not 5 characters or an unknown type.
    """
    facility = facility_code.strip().upper()
    if not re.fullmatch(r"[0-9A-Z]{5}", facility):
        raise ValidationFailed(
            N_("The facility code must have 5 characters."), fields={"facility_code": N_("Invalid.")}
        )
    if kind not in TYPES:
        raise ValidationFailed(N_("Unknown prescription type."), fields={"type": kind})
    while True:
        random = "".join(secrets.choice(ALPHABET) for _ in range(7))
        if not taken(random):
            return PrescriptionCode(facility, random, kind)
