"""REST door to usage corrections: ``POST billing/usage/adjust`` (staff).

Staff with the manage permission name the customer (``customerId``, ``userId`` or
``organizationId``; required here) and correct this period's usage of ``feature`` by
``amount`` with a ``reason``: negative gives usage back, and billed overage with it
(cancelled in Stripe inside its 24-hour window, credited to the customer otherwise;
see :mod:`kernia_billing.services.metering.corrections`). 201 with the correction; a
repeated ``idempotencyKey`` answers the first one (200, ``replayed: true``).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ..exceptions import InvalidRequest
from ..services.metering import corrections
from ..services.usage.validation import MAX_IDEMPOTENCY_KEY_LENGTH
from ..types import CorrectionResult
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS
from .owners import OwnerMixin, owner_identifiers
from .permissions import CanManageBilling
from .schema import extend_schema
from .serializers import (
    MAX_FEATURE_KEY_LENGTH,
    ErrorSerializer,
    OwnerSerializer,
    StrictCharField,
    StrictIntegerField,
)

TAG = "usage corrections"


class CorrectionRequestSerializer(OwnerSerializer):
    feature = StrictCharField(max_length=MAX_FEATURE_KEY_LENGTH, help_text="Feature key.")
    amount = StrictIntegerField(
        help_text="Units to add to this period's usage; negative gives usage back."
    )
    reason = StrictCharField(max_length=corrections.MAX_REASON_LENGTH)
    idempotencyKey = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )


class CorrectionSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="correction_id")
    eventId = serializers.IntegerField(source="event_id", help_text="Its ledger row.")
    feature = serializers.CharField()
    amount = serializers.IntegerField()
    balance = serializers.IntegerField(help_text="The balance after the correction.")
    usage = serializers.IntegerField(help_text="This period's usage after the correction.")
    reason = serializers.CharField()
    unsentUnits = serializers.IntegerField(
        source="unsent_units", help_text="Overage given back before it reached Stripe."
    )
    cancelledUnits = serializers.IntegerField(
        source="cancelled_units", help_text="Overage cancelled in Stripe (24-hour window)."
    )
    resentUnits = serializers.IntegerField(
        source="resent_units", help_text="Units of cancelled events that still stand, re-sent."
    )
    creditedUnits = serializers.IntegerField(
        source="credited_units", help_text="Overage credited to the customer's Stripe balance."
    )
    creditedAmount = serializers.IntegerField(
        source="credited_amount", help_text="The credit, in the currency's minor unit."
    )
    currency = serializers.CharField()
    replayed = serializers.BooleanField()
    createdAt = serializers.DateTimeField(source="created_at")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


class UsageAdjustView(OwnerMixin, BillingAPIView):
    permission_classes = [CanManageBilling]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_usage_adjust",
        summary="Correct a customer's usage this period (staff with the manage permission).",
        request=CorrectionRequestSerializer,
        responses={
            200: CorrectionSerializer,
            201: CorrectionSerializer,
            400: _error("Bad input, or no customer named."),
            402: _error("no_plan, not_included or insufficient_balance (adding usage)."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            409: _error("idempotency_conflict, or usage_below_zero (too much given back)."),
            502: _error("Stripe could not take the cancel or the credit; nothing was written."),
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = CorrectionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if not owner_identifiers(data):
            raise InvalidRequest(
                "Name the customer: customerId, userId or organizationId.",
                fields={"customerId": "This field is required."},
            )
        owner = self.get_owner(data)
        result: CorrectionResult = corrections.adjust_usage(
            owner,
            data["feature"],
            data["amount"],
            reason=data["reason"],
            idempotency_key=data.get("idempotencyKey") or None,
            adjusted_by=request.user,
        )
        code = status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED
        return Response(CorrectionSerializer(result).data, status=code)
