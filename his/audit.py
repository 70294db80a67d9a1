"""Record who read or wrote patient data, off the hot path, and never lose a record on a stop.

Records are queued in memory and written by a background thread every
``audit_flush_seconds`` in their own transaction (so a denied request that rolls back
still leaves its audit record); ``flush()`` writes the queue at once and runs at exit.
With an interval of 0 each request's records are written when the request ends.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from typing import Any

from flask import Flask, current_app, has_request_context, request
from sqlalchemy import insert

from his.db import Database, utcnow
from his.models import AuditRecord

log = logging.getLogger(__name__)


class AuditWriter:
    """Batch audit records and write them in the background."""

    def __init__(self, database: Database, interval: float) -> None:
        self.database = database
        self.interval = interval
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    def add(self, row: dict[str, Any]) -> None:
        self._queue.put(row)
        if self.interval <= 0 and not has_request_context():
            self.flush()

    def flush(self) -> int:
        """Write every queued record now; return how many were written."""
        with self._lock:
            rows: list[dict[str, Any]] = []
            while True:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not rows:
                return 0
            try:
                with self.database.session_scope() as db:
                    db.execute(insert(AuditRecord), rows)
            except Exception:
                log.exception("Could not write %d audit records; keeping them queued", len(rows))
                for row in rows:
                    self._queue.put(row)
                return 0
            return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


def init_app(app: Flask, database: Database, interval: float) -> AuditWriter:
    writer = AuditWriter(database, interval)
    app.extensions["vetinh.audit"] = writer
    if interval <= 0:
        # Unbatched mode (tests): write once the request's own transaction has ended, so the
        # audit insert never waits on the request's SQLite write lock.
        @app.teardown_request
        def _flush(_exc: BaseException | None) -> None:
            writer.flush()

    return writer


def record(
    action: str,
    entity_type: str,
    entity_id: str | None = None,
    *,
    patient_id: str | None = None,
    outcome: str = "success",
    detail: str | None = None,
    claimed_username: str | None = None,
) -> None:
    """Queue an audit record; who, from where and how are taken from the current request.

    ``claimed_username`` names who an anonymous request claimed to be (a failed login).
    """
    row: dict[str, Any] = {
        "recorded_at": utcnow(),
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "patient_id": patient_id,
        "outcome": outcome,
        "detail": detail,
        "user_id": None,
        "username": claimed_username,
        "role": None,
        "site_id": None,
        "address": None,
        "method": None,
        "path": None,
    }
    if has_request_context():
        from his.security import current_principal

        try:
            principal = current_principal()
        except Exception:  # an invalid token is audited as anonymous
            principal = None
        if principal is not None and principal.is_authenticated:
            row.update(
                user_id=principal.user_id,
                username=principal.username,
                role=principal.role or principal.kind,
                site_id=principal.site_id,
            )
        row.update(
            address=request.remote_addr,
            method=request.method,
            path=request.full_path.rstrip("?")[:500],
        )
    writer: AuditWriter = current_app.extensions["vetinh.audit"]
    writer.add(row)


def flush() -> int:
    """Write queued audit records now (tests, shutdown)."""
    writer: AuditWriter = current_app.extensions["vetinh.audit"]
    return writer.flush()
