"""REST doors to self-service subscription changes: validate -> service -> render.

- ``POST billing/subscription/preview`` {price?, quantity?, prorationBehavior?}: what a
  change would do (plan, grants, amount due now from Stripe's invoice preview, amount
  at renewal).
- ``POST billing/subscription`` {price?, quantity?, prorationBehavior?}: change it.
- ``POST billing/subscription/cancel`` {atPeriodEnd=true} and ``.../resume``.
- ``GET billing/invoice/upcoming``: Stripe's preview of the next invoice.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ..services import subscriptions
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, READ_AUTH_ERRORS, _error
from .lifecycle_serializers import MAX_STRIPE_ID_LENGTH
from .owners import IsBillingCaller, OwnerMixin
from .schema import extend_schema
from .serializers import OwnerSerializer, StrictCharField

TAG = "subscription"
STRIPE_ERROR = _error("stripe_error: Stripe failed or could not be reached; nothing was changed.")
CONFLICTS = _error(
    "no_subscription (subscribe through checkout first) or seats_in_use (more seats are "
    "in use than the quantity asked for)."
)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class ChangeSerializer(OwnerSerializer):
    price = StrictCharField(
        required=False,
        max_length=MAX_STRIPE_ID_LENGTH,
        help_text="The new Stripe price (an approved price of a plan); default: the current.",
    )
    quantity = serializers.IntegerField(
        required=False, min_value=1, max_value=100_000, help_text="Seats (seat plans only)."
    )
    prorationBehavior = serializers.ChoiceField(
        choices=["create_prorations", "always_invoice", "none"],
        required=False,
        help_text="Stripe's proration_behavior for changes that apply now (default: "
        "always_invoice, create_prorations for fewer seats).",
    )


class CancelSerializer(OwnerSerializer):
    atPeriodEnd = StrictBooleanField(required=False, default=True)


class LineSerializer(serializers.Serializer):
    description = serializers.CharField()
    amount = serializers.IntegerField(help_text="Minor units; negative for credits.")
    quantity = serializers.IntegerField(allow_null=True)
    price = serializers.CharField(allow_null=True)
    proration = serializers.BooleanField()
    periodStart = serializers.DateTimeField(allow_null=True)
    periodEnd = serializers.DateTimeField(allow_null=True)


class GrantPreviewSerializer(serializers.Serializer):
    feature = serializers.CharField()
    included = serializers.IntegerField()
    unlimited = serializers.BooleanField()
    resetPeriod = serializers.CharField()


class PreviewSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="upgrade, downgrade, interval, seats or unchanged.")
    effective = serializers.CharField(help_text="now or period_end.")
    effectiveAt = serializers.DateTimeField(source="effective_at", allow_null=True)
    plan = serializers.SerializerMethodField()
    price = serializers.CharField()
    quantity = serializers.IntegerField()
    currency = serializers.CharField()
    amountDueNow = serializers.IntegerField(source="amount_due_now")
    amountAtRenewal = serializers.IntegerField(source="amount_at_renewal")
    lines = LineSerializer(many=True)
    grants = GrantPreviewSerializer(many=True)

    def get_plan(self, obj: Any) -> dict[str, str]:
        return {"key": obj.plan, "name": obj.plan_name}


class ChangeResultSerializer(serializers.Serializer):
    kind = serializers.CharField(
        help_text="upgrade, downgrade, interval, seats, unchanged, cancel or resume."
    )
    effective = serializers.CharField(help_text="now or period_end.")
    effectiveAt = serializers.DateTimeField(source="effective_at", allow_null=True)
    plan = serializers.CharField(help_text="The plan now (a downgrade: still the old one).")
    price = serializers.CharField()
    quantity = serializers.IntegerField()
    subscriptionId = serializers.CharField(source="subscription_id")
    scheduleId = serializers.CharField(source="schedule_id", allow_null=True)
    invoiceId = serializers.CharField(source="invoice_id", allow_null=True)
    releasedSchedule = serializers.BooleanField(
        source="released_schedule", help_text="A scheduled downgrade was cancelled."
    )


class UpcomingInvoiceSerializer(serializers.Serializer):
    subscriptionId = serializers.CharField()
    currency = serializers.CharField()
    amountDue = serializers.IntegerField()
    total = serializers.IntegerField()
    periodStart = serializers.DateTimeField(allow_null=True)
    periodEnd = serializers.DateTimeField(allow_null=True)
    nextPaymentAttempt = serializers.DateTimeField(allow_null=True)
    lines = LineSerializer(many=True)


def _change_args(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "price": data.get("price"),
        "quantity": data.get("quantity"),
        "proration_behavior": data.get("prorationBehavior"),
    }


def _change_responses(ok: Any) -> dict[int, Any]:
    """What a preview and a change answer: the same refusals, another 200 body."""
    return {
        200: ok,
        400: _error("Bad input, or a price that cannot be bought."),
        404: _error("unknown_owner or unknown_customer."),
        409: CONFLICTS,
        502: STRIPE_ERROR,
        **AUTH_ERRORS,
    }


class PreviewView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_subscription_preview",
        summary="Preview a plan, seat or interval change.",
        request=ChangeSerializer,
        responses=_change_responses(PreviewSerializer),
    )
    def post(self, request: Request) -> Response:
        serializer = ChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        preview = subscriptions.preview_change(self.get_owner(data), **_change_args(data))
        return Response(PreviewSerializer(preview).data)


class ChangeView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_subscription_change",
        summary="Change plan, seats or billing interval.",
        description="Upgrades, more seats and monthly <-> annual switches apply now with "
        "proration; downgrades at the period end (a Stripe subscription schedule). A new "
        "change, or the current price, cancels a scheduled downgrade.",
        request=ChangeSerializer,
        responses=_change_responses(ChangeResultSerializer),
    )
    def post(self, request: Request) -> Response:
        serializer = ChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = subscriptions.change_subscription(self.get_owner(data), **_change_args(data))
        return Response(ChangeResultSerializer(result).data)


class CancelView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_subscription_cancel",
        summary="Cancel the subscription (at the period end by default).",
        request=CancelSerializer,
        responses={
            200: ChangeResultSerializer,
            400: _error("Bad input."),
            404: _error("unknown_owner or unknown_customer."),
            409: _error("no_subscription."),
            502: STRIPE_ERROR,
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = CancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = subscriptions.cancel_subscription(
            self.get_owner(data), at_period_end=data.get("atPeriodEnd", True)
        )
        return Response(ChangeResultSerializer(result).data)


class ResumeView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_subscription_resume",
        summary="Undo a cancellation at period end or a scheduled downgrade.",
        request=OwnerSerializer,
        responses={
            200: ChangeResultSerializer,
            400: _error("Bad input."),
            404: _error("unknown_owner or unknown_customer."),
            409: _error("no_subscription."),
            502: STRIPE_ERROR,
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = OwnerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = subscriptions.resume_subscription(self.get_owner(serializer.validated_data))
        return Response(ChangeResultSerializer(result).data)


class UpcomingInvoiceView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_invoice_upcoming",
        summary="Stripe's preview of the next invoice, metered usage included.",
        parameters=[OwnerSerializer],
        responses={
            200: UpcomingInvoiceSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_owner or unknown_customer."),
            409: _error("no_subscription."),
            502: STRIPE_ERROR,
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = OwnerSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        invoice = subscriptions.upcoming_invoice(self.get_owner(query.validated_data))
        return Response(UpcomingInvoiceSerializer(invoice).data)
