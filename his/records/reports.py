"""Report antibiotic use: share of visits with an antibiotic and DDD per 1,000 visits.

A visit is a signed encounter; its month is the month it was signed (Hanoi time). DDDs
follow WHO: grams of the antibacterial ingredients prescribed divided by the drug's DDD.
Beta-lactamase inhibitors (clavulanic acid, sulbactam, tazobactam) do not count, since
WHO expresses those combinations as the penicillin alone; co-trimoxazole counts both.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir import services as store
from his.db import as_utc
from his.models import Site, User
from his.records.catalogue import Drug
from his.records.models import Prescription, PrescriptionItem, Signature
from his.records.services import catalogue

INHIBITORS = frozenset({"clavulanic acid", "sulbactam", "tazobactam"})


def ddd_count(drug: Drug, quantity: Decimal) -> Decimal:
    """Return the number of WHO defined daily doses in ``quantity`` dispensing units."""
    if not drug.antibiotic or not drug.ddd:
        return Decimal(0)
    grams_per_dose_unit = sum(
        ((i.mg or Decimal(0)) / 1000 for i in drug.ingredients if i.name not in INHIBITORS), Decimal(0)
    )
    ddd_grams = drug.ddd / 1000 if drug.ddd_unit == "mg" else drug.ddd
    return quantity * drug.dose_units_per_unit * grams_per_dose_unit / ddd_grams


@dataclass
class UseRow:
    """Antibiotic use for one month, clinic and doctor."""

    month: str
    clinic: str
    doctor: str
    visits: int = 0
    visits_with_antibiotic: int = 0
    ddd: Decimal = Decimal(0)

    @property
    def share(self) -> Decimal:
        if not self.visits:
            return Decimal(0)
        return (Decimal(self.visits_with_antibiotic) * 100 / self.visits).quantize(
            Decimal("0.1"), ROUND_HALF_UP
        )

    @property
    def ddd_per_1000(self) -> Decimal:
        if not self.visits:
            return Decimal(0)
        return (self.ddd * 1000 / self.visits).quantize(Decimal("0.1"), ROUND_HALF_UP)


def _clinic(resource: dict[str, Any], default: str) -> str:
    for location in resource.get("location", []):
        display = (location.get("location") or {}).get("display")
        if display:
            return str(display)
    service = resource.get("serviceType") or {}
    return str(service.get("text") or default)


def antibiotic_use(session: Session, site_id: int, start: date, end: date, zone: ZoneInfo) -> list[UseRow]:
    """Return antibiotic use of a site between two days (inclusive), by month, clinic and doctor."""
    # In UTC, as times are stored: SQLite compares the stored UTC text, not instants.
    since = datetime.combine(start, time.min, tzinfo=zone).astimezone(UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC)
    site = session.get(Site, site_id)
    signed = session.execute(
        select(Signature, User)
        .join(User, User.id == Signature.signer_id)
        .where(
            Signature.supersedes_id.is_(None),
            User.site_id == site_id,
            Signature.signed_at >= since,
            Signature.signed_at < until,
        )
    ).all()
    drugs = catalogue(session)
    rows: dict[tuple[str, str, str], UseRow] = {}
    seen: set[str] = set()
    for signature, user in signed:
        if signature.encounter_id in seen:
            continue
        seen.add(signature.encounter_id)
        encounter = store.read(session, "Encounter", signature.encounter_id).resource
        month = as_utc(signature.signed_at).astimezone(zone).strftime("%Y-%m")
        key = (month, _clinic(encounter, site.name if site else ""), user.full_name)
        row = rows.setdefault(key, UseRow(*key))
        row.visits += 1
        items = session.scalars(
            select(PrescriptionItem)
            .join(Prescription, Prescription.id == PrescriptionItem.prescription_id)
            .where(Prescription.encounter_id == signature.encounter_id, Prescription.status == "signed")
        ).all()
        total = Decimal(0)
        any_antibiotic = False
        for item in items:
            drug = drugs.get(item.drug_code)
            if drug is not None and drug.antibiotic:
                any_antibiotic = True
                total += ddd_count(drug, Decimal(item.quantity))
        row.visits_with_antibiotic += int(any_antibiotic)
        row.ddd += total
    return sorted(rows.values(), key=lambda r: (r.month, r.clinic, r.doctor))


def totals(rows: list[UseRow]) -> UseRow:
    """Sum rows into one line for the whole period."""
    total = UseRow("", "", "")
    for row in rows:
        total.visits += row.visits
        total.visits_with_antibiotic += row.visits_with_antibiotic
        total.ddd += row.ddd
    return total


def to_csv(rows: list[UseRow]) -> str:
    """Return the rows as CSV (UTF-8, comma-separated, a header line)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "month",
            "clinic",
            "doctor",
            "visits",
            "visits_with_antibiotic",
            "share_percent",
            "ddd",
            "ddd_per_1000_visits",
        ]
    )
    for row in rows:
        writer.writerow(
            [
                row.month,
                row.clinic,
                row.doctor,
                row.visits,
                row.visits_with_antibiotic,
                row.share,
                row.ddd.quantize(Decimal("0.01"), ROUND_HALF_UP),
                row.ddd_per_1000,
            ]
        )
    return buffer.getvalue()


def by_month(rows: list[UseRow]) -> list[UseRow]:
    """Merge rows per month (for the chart)."""
    months: dict[str, UseRow] = defaultdict(lambda: UseRow("", "", ""))
    for row in rows:
        merged = months[row.month]
        merged.month = row.month
        merged.visits += row.visits
        merged.visits_with_antibiotic += row.visits_with_antibiotic
        merged.ddd += row.ddd
    return [months[m] for m in sorted(months)]
