"""Ask the social-insurance gateway whether a BHYT card (or a citizen's CCCD) is eligible today.

The adapter speaks the gateway's JSON as its published integrations use it (field names
likely, not confirmed by a second source): a POST of ``maThe`` (the card code or, since
the CCCD became the card, the 12-digit CCCD), ``hoTen`` and ``ngaySinh`` (dd/mm/yyyy),
answered by ``maKetQua`` (the result code), ``ghiChu`` and the card's fields
``maThe, hoTen, ngaySinh, gioiTinh, maDKBD, gtTheTu, gtTheDen, ngayDu5Nam``.
Result codes (VIETNAM.md): 000 valid; 010 expired; 050 not found; 051 bad code;
052 bad province; 053 bad benefit digit. The gateway's URL is configuration.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from billing.bhyt import (
    CardBenefitInvalid,
    CardCodeMalformed,
    CardExpired,
    CardProvinceInvalid,
    InvalidCard,
)
from his.errors import N_, VetinhError

ACCEPTED_CODES = frozenset({"000", "001", "002", "003", "004"})
DEFAULT_TIMEOUT = 10.0


class CardNotFound(InvalidCard):
    code = "BHYT_CARD_NOT_FOUND"
    message = N_("The insurance gateway knows no card for this number.")
    gateway_code = "050"


class GatewayRefused(InvalidCard):
    """The gateway refused the card for a reason this system has no special message for."""

    code = "BHYT_GATEWAY_REFUSED"
    message = N_("The insurance gateway did not accept this card.")


class GatewayUnavailable(VetinhError):
    """The gateway is not configured, cannot be reached or answered something unreadable."""

    status = 503
    code = "BHYT_GATEWAY_UNAVAILABLE"
    message = N_("The insurance gateway cannot be reached; check the card by hand and try again later.")


_ERRORS: dict[str, type[InvalidCard]] = {
    "010": CardExpired,
    "050": CardNotFound,
    "051": CardCodeMalformed,
    "052": CardProvinceInvalid,
    "053": CardBenefitInvalid,
}


def _gateway_day(text: Any) -> date | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return datetime.strptime(text.strip(), "%d/%m/%Y").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class EligibilityResult:
    """The gateway's answer: its result code and note, and the card it found."""

    result_code: str
    note: str
    card_code: str | None = None
    full_name: str | None = None
    birth_date: date | None = None
    registered_facility: str | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    five_years_from: date | None = None

    @property
    def eligible(self) -> bool:
        return self.result_code in ACCEPTED_CODES

    def raise_for_code(self) -> None:
        """Raise the InvalidCard subclass of the result code unless the card is eligible."""
        if self.eligible:
            return
        error = _ERRORS.get(self.result_code)
        if error is not None:
            raise error(value=self.card_code or "")
        refused = GatewayRefused(value=self.card_code or "")
        refused.extra["gateway_code"] = self.result_code
        refused.extra["gateway_note"] = self.note
        raise refused

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> EligibilityResult:
        """Read the gateway's JSON answer.

        Raises GatewayUnavailable when it has no result code.
        """
        code = body.get("maKetQua")
        if not isinstance(code, str) or not code.isdigit():
            raise GatewayUnavailable(extra={"reason": "no result code"})
        return cls(
            result_code=code,
            note=str(body.get("ghiChu") or ""),
            card_code=(str(body["maThe"]).strip().upper() if body.get("maThe") else None),
            full_name=(str(body["hoTen"]) if body.get("hoTen") else None),
            birth_date=_gateway_day(body.get("ngaySinh")),
            registered_facility=(str(body["maDKBD"]).strip().upper() if body.get("maDKBD") else None),
            valid_from=_gateway_day(body.get("gtTheTu")),
            valid_to=_gateway_day(body.get("gtTheDen")),
            five_years_from=_gateway_day(body.get("ngayDu5Nam")),
        )


class EligibilityGateway:
    """Call the insurance gateway over HTTP (stdlib only: no client library to install)."""

    def __init__(self, url: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = (url or "").strip()
        self.timeout = timeout

    def check(self, number: str, *, full_name: str, birth_date: date) -> EligibilityResult:
        """Ask about a card code or a 12-digit CCCD for the person named.

        Raises GatewayUnavailable when no URL is configured, the gateway cannot be
        reached in time, answers with an HTTP error or with something that is not JSON.
        """
        if not self.url:
            raise GatewayUnavailable(extra={"reason": "not configured"})
        payload = {
            "maThe": "".join(number.split()).upper(),
            "hoTen": " ".join(full_name.split()),
            "ngaySinh": birth_date.strftime("%d/%m/%Y"),
        }
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's configured https endpoint
            self.url,
            data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
            headers={"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - as above
                body = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise GatewayUnavailable(extra={"reason": type(exc).__name__}) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise GatewayUnavailable(extra={"reason": "not JSON"}) from exc
        if not isinstance(body, dict):
            raise GatewayUnavailable(extra={"reason": "not an object"})
        return EligibilityResult.from_json(body)
