"""Collect the navigation entries each context offers, so menus show only what exists."""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import LazyString


@dataclass(frozen=True)
class NavItem:
    """A link in the main navigation, shown to the given roles."""

    endpoint: str
    label: str | LazyString
    roles: frozenset[str]
    icon: str = ""
    order: int = 100


_ITEMS: list[NavItem] = []


def add_nav_item(
    endpoint: str,
    label: str | LazyString,
    roles: set[str] | frozenset[str],
    *,
    icon: str = "",
    order: int = 100,
) -> None:
    """Offer a link to the roles given (idempotent per endpoint)."""
    if any(item.endpoint == endpoint for item in _ITEMS):
        return
    _ITEMS.append(NavItem(endpoint, label, frozenset(roles), icon, order))
    _ITEMS.sort(key=lambda item: item.order)


def nav_items_for(role: str | None) -> list[NavItem]:
    """Return the links a role sees, in order."""
    if role is None:
        return []
    return [item for item in _ITEMS if role in item.roles]
