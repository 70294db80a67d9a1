"""Run Bulk Data ``$export`` requests as a job that writes NDJSON files.

A kick-off records a request in the export folder (``<data_dir>/fhir-exports/<id>/``)
as ``job.json``; the ``fhir.bulk_export`` job picks pending requests up, writes one
``<Type>.ndjson`` per resource type and marks the request complete. Every state change
replaces ``job.json`` atomically, so any worker can answer the status endpoint and a
second run of the job finds nothing left to do. A cancelled request is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from fhir import jsontext
from fhir.models import FhirCompartment, FhirResource
from fhir.searchparams import date_range
from his.errors import BadRequest, NotFound

STATES = ("accepted", "in-progress", "completed", "failed")
ID_CHARS = frozenset("0123456789abcdef-")


@dataclass
class ExportRequest:
    """One export: what was asked, by whom, and how far it got."""

    id: str
    request_url: str
    level: str
    types: list[str]
    since: str | None
    owner: str
    state: str = "accepted"
    transaction_time: str = ""
    output: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def exports_root(data_dir: str | os.PathLike[str]) -> Path:
    """Return the folder that holds every export."""
    return Path(data_dir) / "fhir-exports"


def _folder(root: Path, export_id: str) -> Path:
    if not export_id or not set(export_id) <= ID_CHARS:
        raise NotFound("No such export.", code="FHIR_EXPORT_NOT_FOUND")
    return root / export_id


def _save(root: Path, export: ExportRequest) -> None:
    folder = root / export.id
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / "job.json.tmp"
    temporary.write_text(json.dumps(asdict(export)))
    os.replace(temporary, folder / "job.json")


def load(root: Path, export_id: str) -> ExportRequest:
    """Return an export by id. Raises NotFound for an unknown or cancelled one."""
    path = _folder(root, export_id) / "job.json"
    try:
        return ExportRequest(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFound("No such export.", code="FHIR_EXPORT_NOT_FOUND") from None


def kick_off(
    root: Path, *, request_url: str, level: str, types: list[str], since: str | None, owner: str
) -> ExportRequest:
    """Record a new export request. Raises BadRequest for a bad ``_since``."""
    if since:
        try:
            date_range(since)
        except ValueError as exc:
            raise BadRequest("_since must be a FHIR instant.", fields={"_since": str(exc)}) from exc
    export = ExportRequest(
        id=str(uuid.uuid4()), request_url=request_url, level=level, types=types, since=since, owner=owner
    )
    _save(root, export)
    return export


def cancel(root: Path, export_id: str) -> None:
    """Cancel an export and delete its files. Raises NotFound when there is none."""
    load(root, export_id)
    shutil.rmtree(_folder(root, export_id), ignore_errors=True)


def pending(root: Path) -> list[str]:
    """Return the ids of exports that still wait for the job, oldest first."""
    if not root.exists():
        return []
    found = []
    for job in root.glob("*/job.json"):
        try:
            state = json.loads(job.read_text())["state"]
        except (OSError, ValueError, KeyError):
            continue
        if state == "accepted":
            found.append((job.stat().st_mtime, job.parent.name))
    return [export_id for _, export_id in sorted(found)]


def _rows(session: Session, export: ExportRequest, rtype: str) -> Iterator[str]:
    stmt = select(FhirResource.content).where(FhirResource.res_type == rtype, FhirResource.deleted == false())
    if export.since:
        stmt = stmt.where(FhirResource.last_updated >= date_range(export.since)[0])
    if export.level == "Patient" and rtype != "Patient":
        stmt = stmt.where(
            FhirResource.res_id.in_(select(FhirCompartment.res_id).where(FhirCompartment.res_type == rtype))
        )
    stmt = stmt.order_by(FhirResource.res_id).execution_options(yield_per=500)
    for (content,) in session.execute(stmt):
        if content is None:
            continue
        yield content if "\n" not in content else jsontext.dumps(jsontext.loads(content))


def _types(session: Session, export: ExportRequest) -> list[str]:
    if export.types:
        return export.types
    stored = select(FhirResource.res_type).where(FhirResource.deleted == false()).distinct()
    if export.level == "Patient":
        stored = select(FhirCompartment.res_type).distinct()
    return sorted(session.scalars(stored))


def run(session: Session, root: Path, export_id: str, base_url: str) -> ExportRequest:
    """Write the NDJSON files of one export and mark it completed (or failed)."""
    from fhir.services import _now, instant

    export = load(root, export_id)
    if export.state != "accepted":
        return export
    export.state = "in-progress"
    export.transaction_time = instant(_now())
    _save(root, export)
    folder = root / export.id
    try:
        output = []
        for rtype in _types(session, export):
            count = 0
            path = folder / f"{rtype}.ndjson"
            with path.open("w", encoding="utf-8") as handle:
                for line in _rows(session, export, rtype):
                    handle.write(line)
                    handle.write("\n")
                    count += 1
            if count:
                output.append(
                    {
                        "type": rtype,
                        "url": f"{base_url}/$export-file/{export.id}/{rtype}.ndjson",
                        "count": count,
                    }
                )
            else:
                path.unlink()
        export.output = output
        export.state = "completed"
    except Exception as exc:  # the request must end in a state the client can read
        export.state = "failed"
        export.error = str(exc)[:500]
    if folder.exists():
        _save(root, export)
    return export


def manifest(export: ExportRequest) -> dict[str, Any]:
    """Return the Bulk Data completion manifest of a completed export."""
    return {
        "transactionTime": export.transaction_time,
        "request": export.request_url,
        "requiresAccessToken": True,
        "output": export.output,
        "error": [],
    }


def run_pending(app: Any) -> int:
    """Run every export that waits (the ``fhir.bulk_export`` job). Returns how many ran."""
    from his.db import get_session

    settings = app.extensions["vetinh.settings"]
    root = exports_root(settings.data_dir)
    base = str(app.config.get("FHIR_BASE_URL") or "") or "/fhir/R4"
    ran = 0
    for export_id in pending(root):
        try:
            base_url = load(root, export_id).request_url.split("/$export")[0].rsplit("/Patient", 1)[0]
        except NotFound:
            continue
        run(get_session(), root, export_id, base_url or base)
        ran += 1
    return ran
