"""DRF permissions that require a feature.

    class ExportView(APIView):
        permission_classes = [IsAuthenticated, RequiresFeature("exports")]

    # act for the organization the request names (organizationId), members only:
    permission_classes = [RequiresFeature("messages", owner=request_owner)]

Anonymous callers are refused by DRF (401/403); a denied check raises the domain
error (402 ``not_included`` / ``insufficient_balance`` / ``no_plan``), rendered in
the error shape by the exception handler. The check never records usage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from ..services.usage.check import check, denial_error
from .owners import IsBillingCaller, can_manage_billing, request_owner

__all__ = ["CanManageBilling", "IsBillingCaller", "RequiresFeature", "request_owner"]


def RequiresFeature(
    feature: str,
    *,
    required: int = 1,
    owner: Callable[[Request], Any] | None = None,
) -> type[BasePermission]:
    """A permission class that lets a request through when ``check`` allows ``feature``."""

    class RequiresFeaturePermission(BasePermission):
        message = f"This requires the {feature!r} feature."

        def has_permission(self, request: Request, view: Any) -> bool:
            if not (request.user and request.user.is_authenticated):
                return False
            who = owner(request) if owner is not None else request.user
            result = check(who, feature, required=required)
            if not result.allowed:
                raise denial_error(result)
            return True

    RequiresFeaturePermission.__name__ = RequiresFeaturePermission.__qualname__ = (
        f"RequiresFeature[{feature}]"
    )
    return RequiresFeaturePermission


class CanManageBilling(BasePermission):
    """Staff holding ``KERNIA_BILLING["MANAGE_PERMISSION"]`` (superusers hold it)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_manage_billing(request.user)
