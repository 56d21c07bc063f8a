"""REST door to add-ons: ``GET/POST billing/addons``.

- ``POST billing/addons`` ``{price, quantity}``: put ``quantity`` of the add-on the
  recurring ``price`` sells on the owner's subscription (a subscription item added,
  its quantity changed, or removed with ``quantity: 0``), through Stripe; the new
  state is applied at once. 200 with the add-ons now on the subscription.
- ``GET billing/addons``: the add-ons on the owner's subscription.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import AddOnItem
from ..services.addons.manage import MAX_QUANTITY, owner_addons, set_addon
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, READ_AUTH_ERRORS
from .lifecycle_serializers import MAX_STRIPE_ID_LENGTH
from .owners import IsBillingCaller, OwnerMixin
from .schema import extend_schema
from .serializers import ErrorSerializer, OwnerSerializer, StrictCharField

TAG = "addons"


class AddOnRequestSerializer(OwnerSerializer):
    price = StrictCharField(max_length=MAX_STRIPE_ID_LENGTH, help_text="A recurring add-on price.")
    quantity = serializers.IntegerField(
        min_value=0, max_value=MAX_QUANTITY, help_text="Units wanted; 0 removes the add-on."
    )


class AddOnItemSerializer(serializers.Serializer):
    addon = serializers.CharField(source="addon.key")
    name = serializers.CharField(source="addon.name")
    price = serializers.CharField(source="stripe_price_id")
    quantity = serializers.IntegerField()
    subscriptionItem = serializers.CharField(source="stripe_subscription_item_id")
    currentPeriodEnd = serializers.DateTimeField(source="current_period_end", allow_null=True)


class AddOnListSerializer(serializers.Serializer):
    results = AddOnItemSerializer(many=True)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


def _render(items: list[AddOnItem]) -> dict[str, Any]:
    return {"results": AddOnItemSerializer(items, many=True).data}


class AddOnsView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_addons_list",
        summary="The add-ons on the owner's subscription.",
        parameters=[OwnerSerializer],
        responses={
            200: AddOnListSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_owner or unknown_customer."),
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = OwnerSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(_render(owner_addons(self.get_owner(query.validated_data))))

    @extend_schema(
        tags=[TAG],
        operation_id="billing_addons_set",
        summary="Add, change or remove an add-on on the owner's subscription (via Stripe).",
        request=AddOnRequestSerializer,
        responses={
            200: AddOnListSerializer,
            400: _error("Bad input, a price that sells no add-on, or no subscription."),
            404: _error("unknown_owner or unknown_customer."),
            409: _error("no_stripe_customer: subscribe to a plan first."),
            502: _error("stripe_error: Stripe failed or refused; nothing was changed."),
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = AddOnRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = self.get_owner(data)
        return Response(_render(set_addon(owner, data["price"], data["quantity"])))
