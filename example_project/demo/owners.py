"""Which billing customer the demo pages act for: the signed-in user or one of their organizations.

The choice lives in the session (``demo_org``). Membership is decided by the same
callback kernia_billing uses (``KERNIA_BILLING["IS_ORGANIZATION_MEMBER"]``), on every
request, so a user removed from an organization stops seeing its billing at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from example_project.accounts.models import Organization
from kernia_billing.conf import billing_settings

SESSION_KEY = "demo_org"


@dataclass(frozen=True)
class OwnerChoice:
    """The owner the page acts for, and the organizations the user may switch to."""

    owner: Any
    label: str
    organization: Organization | None
    organizations: tuple[Organization, ...]


def is_member(user: Any, organization: Organization) -> bool:
    callback = billing_settings.IS_ORGANIZATION_MEMBER
    return bool(callback is not None and callback(user, organization))


def switch_owner(request: HttpRequest, organization_id: str) -> None:
    """Act for ``organization_id`` from now on ("" = the user themself); 403 for non-members."""
    if not organization_id:
        request.session.pop(SESSION_KEY, None)
        return
    organization = Organization.objects.filter(pk=_to_int(organization_id)).first()
    if organization is None or not is_member(request.user, organization):
        raise PermissionDenied("You are not a member of this organization.")
    request.session[SESSION_KEY] = organization.pk


def current_owner(request: HttpRequest) -> OwnerChoice:
    """The user, or the organization chosen in the session while the user is a member."""
    user = request.user
    if not user.is_authenticated:
        raise PermissionDenied("Log in first.")
    organizations = tuple(Organization.objects.filter(members=user).order_by("name"))
    organization_id = request.session.get(SESSION_KEY)
    organization = next((org for org in organizations if org.pk == organization_id), None)
    if organization is not None and is_member(user, organization):
        return OwnerChoice(organization, organization.name, organization, organizations)
    request.session.pop(SESSION_KEY, None)
    return OwnerChoice(user, f"{user.get_username()} (personal)", None, organizations)


def _to_int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PermissionDenied("Unknown organization.") from None
