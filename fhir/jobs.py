"""Register the FHIR layer's background jobs: Bulk Data exports and the AuditEvent copy."""

from __future__ import annotations

from fhir import auditevents, export
from his.jobs import register_job

register_job("fhir.bulk_export", export.run_pending, "interval", seconds=5, coalesce=True, max_instances=1)
register_job("fhir.audit_events", auditevents.run, "interval", seconds=10, coalesce=True, max_instances=1)
