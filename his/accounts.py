"""Manage accounts: passwords, logins with rate limiting, registration, API tokens, clients."""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import has_app_context
from sqlalchemy import CursorResult, bindparam, delete, func, select
from sqlalchemy.orm import Session

from his import events
from his.db import as_utc, core_connection, utcnow
from his.errors import N_, Conflict, NotFound, TooManyRequests, Unauthorized, ValidationFailed
from his.identifiers import InvalidNationalId, validate_cccd
from his.models import ROLES, STAFF_ROLES, ApiClient, ApiToken, LoginAttempt, Site, User, WebSession

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Hash a random password once, on first use (hashing at import slowed every command).

    It is verified when the username is unknown, so that timing does not tell an attacker
    which usernames exist.
    """
    return _hasher.hash(secrets.token_urlsafe(16))


DEFAULT_SCOPES: dict[str, str] = {
    "patient": "openid patient/*.read patient/*.write",
    "admin": "openid user/*.* system/*.*",
}
STAFF_DEFAULT_SCOPE = "openid user/*.*"
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Tell whether the password matches the stored argon2 hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def default_scope(role: str) -> str:
    """Return the scopes a user of this role gets when they ask for none."""
    return DEFAULT_SCOPES.get(role, STAFF_DEFAULT_SCOPE)


def check_login_allowed(session: Session, keys: list[str], *, limit: int, window: int) -> None:
    """Raise TooManyRequests when any key (username, address) failed too often lately."""
    since = utcnow() - timedelta(seconds=window)
    for key in keys:
        count = session.scalar(
            select(func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.key == key, LoginAttempt.attempted_at >= since)
        )
        if (count or 0) >= limit:
            raise TooManyRequests(
                N_("Too many failed logins. Wait a few minutes and try again."),
                code="LOGIN_RATE_LIMITED",
            )


def authenticate(
    session: Session,
    username: str,
    password: str,
    *,
    address: str | None,
    limit: int,
    window: int,
) -> User:
    """Return the active user with these credentials.

    Raises TooManyRequests after ``limit`` failures within ``window`` seconds (by username
    and by address), and Unauthorized with one generic message for any other failure.
    Failed attempts are recorded by the caller's separate unit of work via
    ``record_failed_login`` so that they survive the request's rollback.
    """
    keys = [f"user:{username.lower()}"] + ([f"addr:{address}"] if address else [])
    check_login_allowed(session, keys, limit=limit, window=window)
    user = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if user is None:
        verify_password(_dummy_hash(), password)
        raise Unauthorized(N_("Wrong username or password."), code="LOGIN_FAILED")
    if not verify_password(user.password_hash, password) or not user.active:
        raise Unauthorized(N_("Wrong username or password."), code="LOGIN_FAILED")
    return user


def record_failed_login(session: Session, username: str, address: str | None) -> None:
    """Count a failed login against the username and the address."""
    session.add(LoginAttempt(key=f"user:{username.lower()}"))
    if address:
        session.add(LoginAttempt(key=f"addr:{address}"))


def clear_failed_logins(session: Session, username: str) -> None:
    """Forget a user's failures after a successful login."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.key == f"user:{username.lower()}"))


@dataclass(frozen=True)
class NewUser:
    """What it takes to create an account."""

    username: str
    password: str
    full_name: str
    role: str
    site_code: str | None = None
    email: str | None = None
    phone: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    national_id: str | None = None
    patient_id: str | None = None


def new_user_errors(session: Session, new: NewUser) -> dict[str, str]:
    """Check every field of a new account and return the problems by field (empty when fine).

    Writes nothing; a form shows all of these at once.
    """
    errors: dict[str, str] = {}
    username = new.username.strip()
    if not username or len(username) > 80 or not all(c.isalnum() or c in "._-" for c in username):
        errors["username"] = N_("Use letters, digits, dot, dash or underscore (at most 80).")
    password_problem = password_error(new.password)
    if password_problem:
        errors["password"] = password_problem
    if not new.full_name.strip():
        errors["full_name"] = N_("The name is required.")
    if new.role not in ROLES:
        errors["role"] = N_("Unknown role.")
    if new.role in STAFF_ROLES:
        if not new.site_code:
            errors["site"] = N_("Every staff member belongs to a site.")
        elif session.scalar(select(Site.id).where(Site.code == new.site_code)) is None:
            errors["site"] = N_("Unknown site.")
    if new.birth_date is not None and new.birth_date > date.today():
        errors["birth_date"] = N_("The date of birth cannot be in the future.")
    if new.sex is not None and new.sex not in {"male", "female", "other", "unknown"}:
        errors["sex"] = N_("Choose male, female, other or unknown.")
    if new.email and ("@" not in new.email or len(new.email) > 200):
        errors["email"] = N_("This is not an e-mail address.")
    if new.phone and not _valid_phone(new.phone):
        errors["phone"] = N_("A Vietnamese phone number has 10 digits and starts with 0.")
    if new.national_id:
        try:
            validate_cccd(new.national_id, birth_date=new.birth_date, sex=new.sex)
        except InvalidNationalId as exc:
            errors["national_id"] = str(exc)
    return errors


def password_error(password: str) -> str | None:
    """Return why a password is not acceptable, or None when it is."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return N_("The password needs at least 8 characters.")
    return None


def create_user(session: Session, new: NewUser) -> User:
    """Create an account after checking every field.

    Raises ValidationFailed naming each bad field, Conflict for a taken username or CCCD.
    """
    errors = new_user_errors(session, new)
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    username = new.username.strip()
    site = session.scalar(select(Site).where(Site.code == new.site_code)) if new.role in STAFF_ROLES else None
    national_id = (
        validate_cccd(new.national_id, birth_date=new.birth_date, sex=new.sex) if new.national_id else None
    )
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
        raise Conflict(N_("This username is taken."), code="USERNAME_TAKEN", fields={"username": "taken"})
    if national_id and session.scalar(select(User.id).where(User.national_id == national_id)):
        raise Conflict(
            N_("An account with this CCCD already exists."),
            code="NATIONAL_ID_TAKEN",
            fields={"national_id": "already registered"},
        )
    user = User(
        username=username,
        password_hash=hash_password(new.password),
        full_name=new.full_name.strip(),
        role=new.role,
        site_id=site.id if site else None,
        email=new.email or None,
        phone=new.phone or None,
        birth_date=new.birth_date,
        sex=new.sex,
        national_id=national_id,
        patient_id=new.patient_id,
    )
    session.add(user)
    session.flush()
    return user


def _valid_phone(phone: str) -> bool:
    digits = phone.replace(" ", "").replace(".", "")
    if digits.startswith("+84"):
        digits = "0" + digits[3:]
    return len(digits) == 10 and digits.isdigit() and digits.startswith("0")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session,
    *,
    user: User | None = None,
    client: ApiClient | None = None,
    scope: str,
    ttl_seconds: int,
) -> tuple[str, ApiToken]:
    """Create a bearer token and return it with its row (the token itself is never stored)."""
    token = "vt_" + secrets.token_urlsafe(32)
    row = ApiToken(
        token_hash=_token_hash(token),
        user_id=user.id if user else None,
        client_id=client.id if client else None,
        scope=" ".join(scope.split()),
        expires_at=utcnow() + timedelta(seconds=ttl_seconds),
    )
    session.add(row)
    session.flush()
    return token, row


@dataclass(frozen=True)
class TokenHolder:
    """Who a live bearer token speaks for: a user or a client, with its site and scopes."""

    scope: str
    user_id: int | None
    client_id: int | None
    username: str
    full_name: str
    role: str | None
    site_id: int | None
    site_code: str | None
    patient_id: str | None
    expires_at: datetime


# Built once: this query runs on every API request, and only the columns a principal needs
# travel (whole user, token and site rows cost more to describe than to fetch).
_SITE_OF_HOLDER = Site.__table__.alias("holder_site")
_TOKEN_HOLDER_QUERY = (
    select(
        ApiToken.scope,
        ApiToken.expires_at,
        ApiToken.user_id,
        ApiToken.client_id,
        func.coalesce(User.username, ApiClient.client_id),
        func.coalesce(User.full_name, ApiClient.name),
        User.role,
        func.coalesce(User.site_id, ApiClient.site_id),
        _SITE_OF_HOLDER.c.code,
        User.patient_id,
        func.coalesce(User.active, ApiClient.active),
    )
    .select_from(ApiToken)
    .outerjoin(User, User.id == ApiToken.user_id)
    .outerjoin(ApiClient, ApiClient.id == ApiToken.client_id)
    .outerjoin(_SITE_OF_HOLDER, _SITE_OF_HOLDER.c.id == func.coalesce(User.site_id, ApiClient.site_id))
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


def resolve_token(session: Session, token: str) -> TokenHolder:
    """Return who a bearer token speaks for, in one query.

    Raises Unauthorized when the token is unknown (tampered), expired, or its user or
    client is gone or deactivated.
    """
    found = core_connection(session).execute(_TOKEN_HOLDER_QUERY, {"token_hash": _token_hash(token)}).first()
    if found is None:
        raise Unauthorized(N_("The access token is not valid."), code="INVALID_TOKEN")
    scope, expires_at, user_id, client_id, name, full_name, role, site_id, site_code, patient_id, active = (
        found
    )
    if as_utc(expires_at) <= utcnow():
        raise _token_expired()
    if name is None or not active:
        raise Unauthorized(N_("The access token is not valid."), code="INVALID_TOKEN")
    return TokenHolder(
        scope=scope,
        user_id=user_id,
        client_id=client_id,
        username=name,
        full_name=full_name,
        role=role,
        site_id=site_id,
        site_code=site_code,
        patient_id=patient_id,
        expires_at=as_utc(expires_at),
    )


def _token_expired() -> Unauthorized:
    return Unauthorized(N_("The access token has expired."), code="TOKEN_EXPIRED")


# Published, once the change commits, when a user's tokens end (deactivation, new password).
TOKENS_ENDED = "accounts.tokens_ended"


class TokenCache:
    """Remember, for a few seconds, who the bearer tokens seen by this process speak for.

    Every API request would otherwise spend a database query on its token. A remembered
    token is still refused the moment it expires. When a user's tokens end (deactivated,
    password reset) the commit publishes ``accounts.tokens_ended`` and every process drops
    that user's tokens before it serves its next request (through Redis when events go
    through Redis; with the in-process bus, other worker processes notice within
    ``seconds``). A token deleted behind the app's back also stops working within ``seconds``.
    """

    LIMIT = 10_000

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[str, tuple[float, TokenHolder]] = {}
        self._ended: events.Subscription | None = None  # to TOKENS_ENDED, opened on first use
        self._lock = threading.Lock()

    def resolve(self, session: Session, token: str) -> TokenHolder:
        """Return who ``token`` speaks for (see ``resolve_token``), remembered or looked up."""
        self._forget_ended()
        key = _token_hash(token)
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.seconds:
            holder = entry[1]
            if holder.expires_at <= utcnow():
                self._entries.pop(key, None)
                raise _token_expired()
            return holder
        holder = resolve_token(session, token)
        if len(self._entries) >= self.LIMIT:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), holder)
        return holder

    def _forget_ended(self) -> None:
        """Drop the tokens of every user whose tokens ended since the last request."""
        if self._ended is None:
            with self._lock:
                if self._ended is None:
                    self._ended = events.subscribe(TOKENS_ENDED)
        while (event := self._ended.get(timeout=0)) is not None:
            user_id = event.data.get("user_id")
            for key, (_, holder) in list(self._entries.items()):
                if holder.user_id == user_id:
                    self._entries.pop(key, None)


def narrow_scope(requested: str | None, allowed: str) -> str:
    """Grant the requested scopes that the allowed set covers (all allowed when none asked)."""
    allowed_set = allowed.split()
    if not requested:
        return " ".join(allowed_set)
    granted = [s for s in requested.split() if any(scope_covers(a, s) for a in allowed_set)]
    if not granted:
        raise ValidationFailed(
            N_("None of the requested scopes can be granted."), fields={"scope": "not allowed"}
        )
    return " ".join(granted)


def scope_covers(granted: str, wanted: str) -> bool:
    """Tell whether one SMART scope (``user/*.*``) covers another (``user/Patient.read``)."""
    if granted == wanted:
        return True
    try:
        g_ctx, g_rest = granted.split("/", 1)
        w_ctx, w_rest = wanted.split("/", 1)
        g_type, g_access = g_rest.rsplit(".", 1)
        w_type, w_access = w_rest.rsplit(".", 1)
    except ValueError:
        return False
    return (
        g_ctx == w_ctx
        and g_type in {"*", w_type}
        and (g_access in {"*", w_access} or (g_access == "write" and w_access == "write"))
    )


def create_client(
    session: Session, *, client_id: str, name: str, scope: str, site_code: str | None
) -> tuple[ApiClient, str]:
    """Register a system client and return it with its secret (shown once)."""
    if session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)):
        raise Conflict(N_("This client id is taken."), code="CLIENT_TAKEN")
    site_id = None
    if site_code:
        site = session.scalar(select(Site).where(Site.code == site_code))
        if site is None:
            raise NotFound(N_("Unknown site."), fields={"site": site_code})
        site_id = site.id
    secret = secrets.token_urlsafe(32)
    client = ApiClient(
        client_id=client_id,
        secret_hash=hash_password(secret),
        name=name,
        scope=scope,
        site_id=site_id,
    )
    session.add(client)
    session.flush()
    return client, secret


def authenticate_client(session: Session, client_id: str, secret: str) -> ApiClient:
    """Return the active client with these credentials; raise Unauthorized otherwise."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None:
        verify_password(_dummy_hash(), secret)
        raise Unauthorized(N_("Wrong client credentials."), code="LOGIN_FAILED")
    if not client.active or not verify_password(client.secret_hash, secret):
        raise Unauthorized(N_("Wrong client credentials."), code="LOGIN_FAILED")
    return client


def purge_expired(session: Session, now: datetime | None = None) -> int:
    """Delete expired tokens and web sessions; return how many rows went."""
    from his.models import WebSession

    moment = now or utcnow()
    tokens = cast(CursorResult[Any], session.execute(delete(ApiToken).where(ApiToken.expires_at <= moment)))
    sessions = cast(
        CursorResult[Any], session.execute(delete(WebSession).where(WebSession.expires_at <= moment))
    )
    return (tokens.rowcount or 0) + (sessions.rowcount or 0)


def end_sessions(session: Session, user_id: int, *, keep_session_id: str | None = None) -> int:
    """End a user's browser sessions and revoke their bearer tokens; return how many went.

    ``keep_session_id`` spares the session the change is made from (a user resetting their
    own password stays signed in there).
    """
    doomed = [
        sid
        for sid, data in session.execute(select(WebSession.id, WebSession.data))
        if isinstance(data, dict) and data.get("user_id") == user_id and sid != keep_session_id
    ]
    ended = 0
    if doomed:
        ended += (
            cast(
                CursorResult[Any], session.execute(delete(WebSession).where(WebSession.id.in_(doomed)))
            ).rowcount
            or 0
        )
    tokens = cast(CursorResult[Any], session.execute(delete(ApiToken).where(ApiToken.user_id == user_id)))
    _announce_tokens_ended(user_id)
    return ended + (tokens.rowcount or 0)


def _announce_tokens_ended(user_id: int) -> None:
    """Tell every process's token cache, once this commits, that the user's tokens ended.

    A script working on a bare session has no app and so no bus: caches then notice within
    their few seconds, as they do a token deleted behind the app's back.
    """
    if has_app_context():
        events.publish(TOKENS_ENDED, {"user_id": user_id})


def set_active(session: Session, user: User, active: bool) -> None:
    """Deactivate or reactivate an account; a deactivated user's sessions and tokens end at once."""
    user.active = active
    if not active:
        end_sessions(session, user.id)
    session.flush()


def reset_password(
    session: Session, user: User, password: str, *, keep_session_id: str | None = None
) -> None:
    """Give a user a new password and end their other sessions and tokens.

    Raises ValidationFailed naming ``password`` when it breaks the password rules.
    """
    problem = password_error(password)
    if problem:
        raise ValidationFailed(N_("Some fields are not valid."), fields={"password": problem})
    user.password_hash = hash_password(password)
    end_sessions(session, user.id, keep_session_id=keep_session_id)
    session.flush()
