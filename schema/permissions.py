"""Who may use which field: declared next to the field as `permission_classes=[allow(...)]`."""

from __future__ import annotations

from typing import Any

from strawberry import Info
from strawberry.permission import BasePermission

from resolvers.kinds import Role
from schema.context import forbidden, unauthenticated


def allow(*roles: str) -> type[BasePermission]:
    """A permission for these roles (admin is always allowed)."""
    allowed = frozenset(roles) | {Role.ADMIN}

    class Allow(BasePermission):
        # Read by the compiled executor (gateway.compiled), which checks the same roles.
        roles = allowed

        def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
            principal = info.context.principal
            if principal is None:
                raise unauthenticated()
            if principal.role not in allowed:
                raise forbidden(f"The {principal.role} role may not use {info.field_name}")
            return True

    Allow.__name__ = Allow.__qualname__ = "Allow_" + "_".join(sorted(allowed))
    return Allow


def authenticated() -> type[BasePermission]:
    return allow(Role.VIEWER, Role.SERVICE, Role.SUPPORT, Role.DASHBOARD)


STAFF_READ = allow(Role.SERVICE, Role.SUPPORT, Role.DASHBOARD)
SUPPORT = allow(Role.SUPPORT)
SPEND = allow(Role.SERVICE, Role.SUPPORT)
SERVICE = allow(Role.SERVICE, Role.SUPPORT)
DASHBOARD = allow(Role.SUPPORT, Role.DASHBOARD)
ANY_CALLER = authenticated()
TRACK = allow(Role.VIEWER, Role.SERVICE, Role.SUPPORT)
CHECKOUT = allow(Role.VIEWER, Role.SUPPORT)
PORTAL = allow(Role.VIEWER, Role.SUPPORT)
