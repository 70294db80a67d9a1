"""Tell who is asking: the principal behind a session cookie or a bearer token."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, redirect, request, session, url_for
from sqlalchemy import bindparam, select

from his.accounts import TokenCache, resolve_token, scope_covers
from his.db import get_session
from his.errors import Forbidden, Unauthorized
from his.models import STAFF_ROLES, Site, User

F = TypeVar("F", bound=Callable[..., Any])

_BEARER_CACHE = "vetinh.tokens"


def init_app(app: Flask, token_cache_seconds: float) -> None:
    """Give the app a bearer-token cache, unless ``token_cache_seconds`` is 0 (see ``TokenCache``)."""
    if token_cache_seconds > 0:
        app.extensions[_BEARER_CACHE] = TokenCache(token_cache_seconds)


@dataclass(frozen=True)
class Principal:
    """The authenticated party of a request, with its role, site and scopes."""

    kind: str = "anonymous"
    user_id: int | None = None
    username: str = ""
    full_name: str = ""
    role: str | None = None
    site_id: int | None = None
    site_code: str | None = None
    patient_id: str | None = None
    client_id: int | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_authenticated(self) -> bool:
        return self.kind != "anonymous"

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES or self.kind == "client"

    def allows(self, resource_type: str, access: str) -> bool:
        """Tell whether the scopes allow ``access`` ("read"/"write") on a resource type."""
        contexts = ("patient", "user", "system")
        return any(
            scope_covers(granted, f"{ctx}/{resource_type}.{access}")
            for granted in self.scopes
            for ctx in contexts
        )


ANONYMOUS = Principal()
SESSION_SCOPES = frozenset({"user/*.*"})
PATIENT_SESSION_SCOPES = frozenset({"patient/*.read", "patient/*.write"})


def principal_for_user(user: User, scopes: frozenset[str] | None = None) -> Principal:
    """Build the principal of a user (a session gets their role's full scopes)."""
    if scopes is None:
        scopes = PATIENT_SESSION_SCOPES if user.role == "patient" else SESSION_SCOPES
    return Principal(
        kind="user",
        user_id=user.id,
        username=user.username,
        full_name=user.full_name,
        role=user.role,
        site_id=user.site_id,
        site_code=user.site.code if user.site else None,
        patient_id=user.patient_id,
        scopes=scopes,
    )


def current_principal() -> Principal:
    """Return the request's principal, resolved once per request.

    Raises Unauthorized when a bearer token is present but unknown, tampered or expired.
    """
    cached = g.get("_vetinh_principal")
    if cached is not None:
        return cast(Principal, cached)
    principal = _resolve()
    g._vetinh_principal = principal
    return principal


def _resolve() -> Principal:
    header = request.headers.get("Authorization", "")
    db = get_session()
    if header:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("Use 'Authorization: Bearer <token>'.", code="INVALID_TOKEN")
        tokens = current_app.extensions.get(_BEARER_CACHE)
        holder = tokens.resolve(db, token.strip()) if tokens else resolve_token(db, token.strip())
        return Principal(
            kind="user" if holder.user_id is not None else "client",
            user_id=holder.user_id,
            username=holder.username,
            full_name=holder.full_name,
            role=holder.role,
            site_id=holder.site_id,
            site_code=holder.site_code,
            patient_id=holder.patient_id,
            client_id=holder.client_id,
            scopes=frozenset(holder.scope.split()),
        )
    user_id = session.get("user_id")
    if user_id is None:
        return ANONYMOUS
    found = db.execute(_SESSION_USER_QUERY, {"user_id": user_id}).first()
    if found is None or not found.active:
        session.clear()
        return ANONYMOUS
    return Principal(
        kind="user",
        user_id=user_id,
        username=found.username,
        full_name=found.full_name,
        role=found.role,
        site_id=found.site_id,
        site_code=found.site_code,
        patient_id=found.patient_id,
        scopes=PATIENT_SESSION_SCOPES if found.role == "patient" else SESSION_SCOPES,
    )


# Built once: every page and every tile of a signed-in browser asks it.
_SESSION_USER_QUERY = (
    select(
        User.username,
        User.full_name,
        User.role,
        User.site_id,
        Site.code.label("site_code"),
        User.patient_id,
        User.active,
    )
    .outerjoin(Site, Site.id == User.site_id)
    .where(User.id == bindparam("user_id"))
)


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/fhir/")) or request.accept_mimetypes.best == "application/json"


def login_required(view: F) -> F:
    """Let only authenticated principals in: pages redirect to login, APIs get 401."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_principal().is_authenticated:
            if _wants_json():
                raise Unauthorized()
            return redirect(url_for("his.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return cast(F, wrapper)


def roles_required(*roles: str) -> Callable[[F], F]:
    """Let in only principals with one of these roles (403, audited, otherwise)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        @login_required
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from his.policy import ensure_role

            ensure_role(current_principal(), *roles)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator


def scope_required(resource_type: str, access: str) -> Callable[[F], F]:
    """Let in only principals whose scopes allow this access (403 otherwise)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        @login_required
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_principal().allows(resource_type, access):
                raise Forbidden(
                    f"The token's scopes do not allow {access} on {resource_type}.",
                    code="INSUFFICIENT_SCOPE",
                )
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
