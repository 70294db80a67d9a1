"""Start pathology's writing transactions with SQLite's write lock held.

On SQLite a transaction that reads and then writes fails with "database is locked" when
another writer committed in between (two slides uploaded at once): a deferred
transaction cannot be upgraded once its snapshot is stale. Taking the lock when the
transaction begins (``his.db.begin_immediate``) makes concurrent writers wait their turn
instead. PostgreSQL needs nothing (``begin_immediate`` is a no-op there).

File work (copying, hashing, inspecting a slide) is done before the lock is taken, so
the lock is held only for the short database part.
"""

from __future__ import annotations

from flask import has_request_context
from sqlalchemy.orm import Session

from his.db import begin_immediate

_LOCKED = "pathology.write_locked"


def take_write_lock(session: Session) -> None:
    """Make the session's current transaction one that holds SQLite's write lock.

    In a request, a transaction that has only read so far is committed (nothing to lose;
    objects stay loaded) and a new one is begun with the lock. A transaction that already
    holds the lock or has changes to write is kept (writing them takes the lock), and so is
    one outside a request (a job, the demo loader), whose caller owns it. Does nothing on
    other databases.
    """
    if session.get_bind().dialect.name != "sqlite":
        return
    transaction = session.get_transaction()
    if transaction is not None:
        if session.info.get(_LOCKED) is transaction:
            return
        if session.new or session.dirty or session.deleted or not has_request_context():
            # Writing now takes the lock for this transaction; it is kept as it is.
            session.flush()
            session.info[_LOCKED] = transaction
            return
        session.commit()
    begin_immediate(session)
    session.info[_LOCKED] = session.get_transaction()
