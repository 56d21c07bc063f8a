"""REST doors to the catalog: validate -> service -> render.

- ``POST stripe/catalog/sync`` (staff with the manage permission): pull Stripe products
  and prices; the counts as camelCase JSON. Stripe failures answer 502 ``stripe_error``
  and change nothing.
- ``GET billing/plans`` (anyone): the pricing table.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..services import catalog as catalog_service
from .base import BillingAPIView
from .permissions import CanManageBilling
from .schema import extend_schema
from .serializers import ErrorSerializer

TAG = "catalog"


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


class SyncResultSerializer(serializers.Serializer):
    productsCreated = serializers.IntegerField(source="products_created")
    productsUpdated = serializers.IntegerField(source="products_updated")
    productsUnchanged = serializers.IntegerField(source="products_unchanged")
    pricesCreated = serializers.IntegerField(source="prices_created")
    pricesUpdated = serializers.IntegerField(source="prices_updated")
    pricesUnchanged = serializers.IntegerField(source="prices_unchanged")
    created = serializers.IntegerField(help_text="Products and prices created.")
    updated = serializers.IntegerField(help_text="Products and prices updated.")
    unchanged = serializers.IntegerField(help_text="Products and prices unchanged.")
    pendingReview = serializers.IntegerField(
        source="pending_review", help_text="Products and prices that await review in the admin."
    )
    flagged = serializers.IntegerField(
        help_text="Prices mapped to a plan that Stripe archived or deleted."
    )


class CatalogSyncView(BillingAPIView):
    permission_classes = [CanManageBilling]

    @extend_schema(
        tags=[TAG],
        operation_id="stripe_catalog_sync",
        summary="Import Stripe products and prices for review",
        description="Pulls every Stripe product and price (active and archived) into "
        "dj-stripe's mirror and the review queue. New or changed ones await review in the "
        "admin before they can be mapped to plans. Re-running with nothing changed in Stripe "
        "changes nothing.",
        request=None,
        responses={
            200: SyncResultSerializer,
            401: _error("Not signed in (token authentication)."),
            403: _error("Not signed in (session), or not staff with the manage permission."),
            502: _error("Stripe could not be reached or refused the request (stripe_error)."),
        },
    )
    def post(self, request: Request) -> Response:
        result = catalog_service.sync_catalog()
        return Response(SyncResultSerializer(result).data)


class PlanPriceSerializer(serializers.Serializer):
    id = serializers.CharField(source="stripe_id", help_text="Stripe price id.")
    amount = serializers.IntegerField(
        source="unit_amount", allow_null=True, help_text="In the currency's smallest unit."
    )
    currency = serializers.CharField()
    interval = serializers.CharField(
        source="recurring_interval", help_text="day, week, month, year; empty for one-off."
    )
    intervalCount = serializers.IntegerField(source="recurring_interval_count")
    lookupKey = serializers.CharField(source="lookup_key")
    display = serializers.CharField(source="human_readable_amount", help_text="$12.00 / month")


class PlanFeatureSerializer(serializers.Serializer):
    key = serializers.CharField(source="feature.key")
    name = serializers.CharField(source="feature.name")
    kind = serializers.CharField(source="feature.kind")
    unit = serializers.CharField(source="feature.unit")
    included = serializers.IntegerField()
    unlimited = serializers.BooleanField()
    resetPeriod = serializers.CharField(source="reset_period")
    allowOverage = serializers.BooleanField(source="allow_overage")
    includedFromQuantity = serializers.BooleanField(source="included_from_quantity")


class PlanSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    isDefault = serializers.BooleanField(source="is_default")
    displayOrder = serializers.IntegerField(source="display_order")
    trialDays = serializers.IntegerField(source="trial_days", help_text="0: no trial.")
    prices = serializers.SerializerMethodField()
    features = PlanFeatureSerializer(many=True, source="current_features")

    @extend_schema_field(PlanPriceSerializer(many=True))
    def get_prices(self, plan: Any) -> list[dict[str, Any]]:
        return PlanPriceSerializer([m.price for m in plan.offered_prices], many=True).data  # type: ignore[return-value]


class PlansSerializer(serializers.Serializer):
    plans = PlanSerializer(many=True)


class PlansView(BillingAPIView):
    permission_classes = [AllowAny]

    def get_authenticators(self) -> list[Any]:
        # Public: a stale session or token must not turn the pricing table into a 403.
        return []

    @extend_schema(
        tags=[TAG],
        operation_id="billing_plans",
        summary="Pricing table",
        description="Active plans in display order with the Stripe prices they can be bought "
        "with and the features they include (the seed's shape).",
        responses={200: PlansSerializer},
    )
    def get(self, request: Request) -> Response:
        return Response(PlansSerializer({"plans": selectors.pricing_plans()}).data)
