"""Who is billed for a REST request: the signed-in user, an organization, or (staff) anyone.

Rules (SPEC §4), shared by every owner-scoped endpoint:

- No identifier: the signed-in user.
- ``organizationId``: an instance of ``KERNIA_BILLING["ORGANIZATION_MODEL"]``, allowed
  when ``IS_ORGANIZATION_MEMBER(user, organization)`` says so.
- ``customerId`` (a billing customer's id) or ``userId``: only for staff holding
  ``KERNIA_BILLING["MANAGE_PERMISSION"]`` (superusers hold every permission), who may
  also name any organization.
- At most one identifier per request. Anyone else gets 403 and no data; anonymous
  callers 401/403; a malformed id 400; an unknown one 404 (always in the error shape).

Views pass the identifiers they received (body for POST, query string for GET), e.g.
``resolve_owner(request, serializer.validated_data)`` or ``OwnerMixin.get_owner()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from ..conf import billing_settings
from ..exceptions import InvalidRequest, UnknownCustomer, UnknownOwner
from ..models import BillingCustomer

OWNER_FIELDS = ("organizationId", "customerId", "userId")
MAX_OWNER_ID_LENGTH = 64


class OwnerForbidden(exceptions.PermissionDenied):
    default_detail = "You may not act for this billing owner."


def can_manage_billing(user: Any) -> bool:
    """Staff holding the app's manage permission may act for any customer."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and (user.is_staff or user.is_superuser)
        and user.has_perm(billing_settings.MANAGE_PERMISSION)
    )


def owner_identifiers(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The owner identifiers present in ``data`` (body or query string); blanks ignored."""
    if not data:
        return {}
    found = {}
    for name in OWNER_FIELDS:
        value = data.get(name)
        if value is not None and value != "":
            found[name] = value
    return found


def resolve_owner(request: Request, data: Mapping[str, Any] | None = None) -> Any:
    """The user, organization or :class:`BillingCustomer` this request acts for.

    ``data`` holds the identifiers the caller sent (``organizationId``, ``customerId``,
    ``userId``). Raises DRF ``NotAuthenticated``/``PermissionDenied`` or a domain
    error (400 malformed, 404 unknown), all rendered in the error shape.
    """
    user = request.user
    if user is None or not user.is_authenticated:
        raise exceptions.NotAuthenticated()
    identifiers = owner_identifiers(data)
    if not identifiers:
        return user
    if len(identifiers) > 1:
        raise InvalidRequest(
            "Name at most one of organizationId, customerId, userId.",
            fields={name: "Name only one owner." for name in identifiers},
        )
    ((name, raw_value),) = identifiers.items()
    manager = can_manage_billing(user)
    if name == "organizationId":
        organization = _lookup_organization(raw_value)
        if organization is not None and (manager or _is_member(user, organization)):
            return organization
        if organization is None and manager:
            raise UnknownOwner("No such organization.", fields={name: str(raw_value)})
        # Unknown and foreign organizations look alike to non-managers: no probing ids.
        raise OwnerForbidden()
    # customerId and userId name someone else: staff with the manage permission only.
    # Checked before the lookup so that non-staff cannot probe which ids exist.
    if not manager:
        raise OwnerForbidden()
    if name == "customerId":
        customer_id = _to_pk(BillingCustomer, raw_value, name)
        customer = BillingCustomer.objects.select_related("plan").filter(pk=customer_id).first()
        if customer is None:
            raise UnknownCustomer(fields={name: str(raw_value)})
        return customer
    user_model = get_user_model()
    owner = user_model._default_manager.filter(pk=_to_pk(user_model, raw_value, name)).first()
    if owner is None:
        raise UnknownOwner("No such user.", fields={name: str(raw_value)})
    return owner


def organization_model() -> type[models.Model] | None:
    label = billing_settings.ORGANIZATION_MODEL
    return apps.get_model(label) if label else None


def _lookup_organization(raw_value: Any) -> Any | None:
    model = organization_model()
    if model is None:
        raise InvalidRequest(
            "This project does not bill organizations.",
            fields={"organizationId": "Organizations are not enabled."},
        )
    return model._default_manager.filter(pk=_to_pk(model, raw_value, "organizationId")).first()


def _is_member(user: Any, organization: Any) -> bool:
    is_member = billing_settings.IS_ORGANIZATION_MEMBER
    # No callback configured: nobody is a member (system check E00x reports it).
    return bool(is_member is not None and is_member(user, organization))


def _to_pk(model: type[models.Model], raw_value: Any, name: str) -> Any:
    """Parse an id the way the model's primary key does; malformed -> 400, never 500."""
    if isinstance(raw_value, bool) or not isinstance(raw_value, (int, str)):
        raise InvalidRequest(f"{name} must be an id.", fields={name: "Must be an id."})
    text = str(raw_value).strip()
    if not text or len(text) > MAX_OWNER_ID_LENGTH:
        raise InvalidRequest(f"{name} is not a valid id.", fields={name: "Not a valid id."})
    pk_field = model._meta.pk
    assert pk_field is not None
    try:
        value = pk_field.to_python(text)
        # Out-of-range integers would reach the database and fail there.
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise DjangoValidationError("out of range")
    except (DjangoValidationError, ValueError, TypeError, OverflowError):
        raise InvalidRequest(
            f"{name} is not a valid id.", fields={name: "Not a valid id."}
        ) from None
    return value


class IsBillingCaller(BasePermission):
    """Authenticated callers only; which owner they may act for is decided per request."""

    message = "Sign in to use billing."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)


class OwnerMixin:
    """For views whose owner identifiers travel in the body (POST) or query string (GET)."""

    def owner_data(self) -> Mapping[str, Any]:
        request: Request = self.request  # type: ignore[attr-defined]
        if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return request.query_params
        data = request.data
        return data if isinstance(data, Mapping) else {}

    def get_owner(self, data: Mapping[str, Any] | None = None) -> Any:
        request: Request = self.request  # type: ignore[attr-defined]
        return resolve_owner(request, self.owner_data() if data is None else data)


def request_owner(request: Request) -> Any:
    """``owner=`` callable for :func:`~kernia_billing.api.permissions.RequiresFeature`:
    the owner the request names (query string, or JSON body), else the user."""
    data: Any = request.query_params
    if not owner_identifiers(data) and request.method not in ("GET", "HEAD", "OPTIONS"):
        body = request.data
        data = body if isinstance(body, Mapping) else {}
    return resolve_owner(request, data)
