"""Usage reporting to Stripe meters: ``GET billing/usage-reporting/health`` (staff)."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ..services.metering.health import reporting_health
from .base import BillingAPIView
from .entitlements import READ_AUTH_ERRORS
from .permissions import CanManageBilling
from .schema import extend_schema

TAG = "Usage reporting"


class ReportingHealthSerializer(serializers.Serializer):
    windowStart = serializers.DateTimeField(source="window_start")
    pending = serializers.IntegerField(help_text="Overage reports not yet in Stripe.")
    oldestPendingAt = serializers.DateTimeField(source="oldest_pending_at", allow_null=True)
    lagSeconds = serializers.IntegerField(
        source="lag_seconds", help_text="Age of the oldest unsent overage."
    )
    sent = serializers.IntegerField(help_text="Sent over 24 h.")
    parked = serializers.IntegerField(help_text="Refused by Stripe over 24 h.")
    unbilled = serializers.IntegerField(help_text="Without an overage price over 24 h.")
    parkedTotal = serializers.IntegerField(source="parked_total")
    alarming = serializers.BooleanField()
    lastError = serializers.CharField(source="last_error")


class ReportingHealthView(BillingAPIView):
    permission_classes = [CanManageBilling]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_usage_reporting_health",
        summary="Overage reporting to Stripe billing meters (staff).",
        responses={200: ReportingHealthSerializer, **READ_AUTH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(ReportingHealthSerializer(reporting_health()).data)
