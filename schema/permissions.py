"""Who may use which field: declared next to the field as `permission_classes=[allow(...)]`."""

from __future__ import annotations

from typing import Any

from strawberry import Info
from strawberry.permission import BasePermission

from schema.context import VIEWER, forbidden, unauthenticated


def allow(*roles: str) -> type[BasePermission]:
    """A permission for these roles (admin is always allowed)."""
    allowed = frozenset(roles) | {"admin"}

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
    return allow(VIEWER, "service", "support", "dashboard")


STAFF_READ = allow("service", "support", "dashboard")
SUPPORT = allow("support")
SPEND = allow("service", "support")
SERVICE = allow("service", "support")
DASHBOARD = allow("support", "dashboard")
ANY_CALLER = authenticated()
TRACK = allow(VIEWER, "service", "support")
CHECKOUT = allow(VIEWER, "support")
PORTAL = allow(VIEWER, "support")
