"""Keep browser sessions on the server so that logout and expiry really end them."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import bindparam, delete, select
from werkzeug.datastructures import CallbackDict

from his.db import as_utc, begin_immediate, get_database, utcnow
from his.models import WebSession

_SESSION_QUERY = select(WebSession.data, WebSession.expires_at).where(WebSession.id == bindparam("sid"))


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """A session whose data lives in the ``web_sessions`` table."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None) -> None:
        def on_update(_self: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.modified = False
        self.rotate = False


class DatabaseSessionInterface(SessionInterface):
    """Store each session as a row; the cookie carries only a random, signed-free id."""

    def __init__(self, ttl_seconds: int) -> None:
        self.ttl = timedelta(seconds=ttl_seconds)

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid or len(sid) > 64:
            return ServerSession()
        # A plain connection and two columns: this runs before every request of a browser.
        with get_database(app).engine.connect() as connection:
            row = connection.execute(_SESSION_QUERY, {"sid": sid}).first()
        if row is None or as_utc(row.expires_at) <= utcnow():
            return ServerSession()
        return ServerSession(dict(row.data or {}), sid=sid)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        if not session:
            if session.sid is not None and session.modified:
                with get_database(app).session_scope() as db:
                    begin_immediate(db)
                    db.execute(delete(WebSession).where(WebSession.id == session.sid))
                response.delete_cookie(name, domain=domain, path=path)
            return
        if not session.modified and session.sid is not None:
            return
        expires = utcnow() + self.ttl
        with get_database(app).session_scope() as db:
            # Read-then-write: take SQLite's write lock first so a concurrent writer makes
            # this wait (busy timeout) instead of failing with "database is locked".
            begin_immediate(db)
            if session.rotate and session.sid is not None:
                db.execute(delete(WebSession).where(WebSession.id == session.sid))
                session.sid = None
            if session.sid is None:
                session.sid = secrets.token_urlsafe(32)
                db.add(WebSession(id=session.sid, data=dict(session), expires_at=expires))
            else:
                row = db.get(WebSession, session.sid)
                if row is None:
                    db.add(WebSession(id=session.sid, data=dict(session), expires_at=expires))
                else:
                    row.data = dict(session)
                    row.expires_at = expires
        response.set_cookie(
            name,
            session.sid,
            expires=expires,
            httponly=True,
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app) or "Lax",
            domain=domain,
            path=path,
        )
