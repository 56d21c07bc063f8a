"""Serializers of the Stripe lifecycle endpoints: JSON shape only (camelCase)."""

from __future__ import annotations

from rest_framework import serializers

from .serializers import (
    GrantPartSerializer,
    OverageEstimateSerializer,
    OwnerSerializer,
    StrictCharField,
)

MAX_URL_LENGTH = 2048
MAX_STRIPE_ID_LENGTH = 255


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.CharField(help_text="Stripe subscription status.")
    currentPeriodStart = serializers.DateTimeField(source="current_period_start", allow_null=True)
    currentPeriodEnd = serializers.DateTimeField(source="current_period_end", allow_null=True)
    cancelAtPeriodEnd = serializers.BooleanField(source="cancel_at_period_end")
    trialEnd = serializers.DateTimeField(source="trial_end", allow_null=True)
    seatQuantity = serializers.IntegerField(source="seat_quantity", allow_null=True)


class PlanRefSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()


class EntitlementStateSerializer(serializers.Serializer):
    feature = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    included = serializers.IntegerField()
    usage = serializers.IntegerField()
    balance = serializers.IntegerField()
    unlimited = serializers.BooleanField()
    allowOverage = serializers.BooleanField(source="allow_overage")
    resetPeriod = serializers.CharField(source="reset_period")
    periodStart = serializers.DateTimeField(source="period_start", allow_null=True)
    nextResetAt = serializers.DateTimeField(source="next_reset_at", allow_null=True)
    nextExpiry = serializers.DateTimeField(
        source="next_expiry", allow_null=True, help_text="Soonest expiry of a grant."
    )
    grants = GrantPartSerializer(many=True, help_text="Sources of the balance, in draw order.")


class CustomerStateSerializer(serializers.Serializer):
    customerId = serializers.IntegerField(source="customer_id")
    stripeCustomerId = serializers.CharField(source="stripe_customer_id", allow_null=True)
    subscription = SubscriptionSerializer(allow_null=True)
    plan = PlanRefSerializer(allow_null=True)
    portalAvailable = serializers.BooleanField(source="portal_available")
    entitlements = EntitlementStateSerializer(many=True)
    overage = OverageEstimateSerializer(many=True, help_text="This period's overage.")


class CheckoutSerializer(OwnerSerializer):
    """``{plan, interval?}`` or ``{price}``; optional seat ``quantity`` and redirect URLs."""

    plan = StrictCharField(required=False, max_length=100, help_text="Plan key.")
    interval = serializers.ChoiceField(
        choices=["day", "week", "month", "year"],
        required=False,
        help_text="Billing interval of the plan's price (default: monthly if sold).",
    )
    price = StrictCharField(
        required=False, max_length=MAX_STRIPE_ID_LENGTH, help_text="A Stripe price id."
    )
    quantity = serializers.IntegerField(
        required=False, min_value=1, max_value=100_000, help_text="Seats (seat plans only)."
    )
    successUrl = StrictCharField(
        required=False,
        max_length=MAX_URL_LENGTH,
        help_text="Where to land after paying (an allowed host).",
    )
    cancelUrl = StrictCharField(
        required=False,
        max_length=MAX_URL_LENGTH,
        help_text="Where to land when abandoning checkout (an allowed host).",
    )

    def validate(self, attrs: dict) -> dict:
        if bool(attrs.get("plan")) == bool(attrs.get("price")):
            raise serializers.ValidationError({"plan": "Name either a plan or a price."})
        if attrs.get("price") and attrs.get("interval"):
            raise serializers.ValidationError({"interval": "A price has its own interval."})
        return attrs


class CheckoutResultSerializer(serializers.Serializer):
    url = serializers.URLField(help_text="Send the customer here (Stripe Checkout).")
    sessionId = serializers.CharField(source="session_id")


class CheckoutReturnQuerySerializer(serializers.Serializer):
    session_id = serializers.CharField(max_length=MAX_STRIPE_ID_LENGTH)
    next = serializers.CharField(required=False, max_length=MAX_URL_LENGTH)


class CheckoutReturnSerializer(serializers.Serializer):
    sessionId = serializers.CharField(source="session_id")
    status = serializers.CharField(help_text="Checkout Session status (complete, open ...).")
    subscriptionId = serializers.CharField(source="subscription_id", allow_blank=True)
    plan = serializers.CharField(allow_null=True, help_text="The customer's plan now.")


class PortalSerializer(OwnerSerializer):
    returnUrl = StrictCharField(
        required=False, max_length=MAX_URL_LENGTH, help_text="Where the portal links back to."
    )


class UrlSerializer(serializers.Serializer):
    url = serializers.URLField()


class WebhookFailureSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    type = serializers.CharField()
    message = serializers.CharField()


class WebhookCountsSerializer(serializers.Serializer):
    processed = serializers.IntegerField()
    failed = serializers.IntegerField()
    invalidSignature = serializers.IntegerField(source="invalid_signature")


class WebhookHealthSerializer(serializers.Serializer):
    lastReceivedAt = serializers.DateTimeField(source="last_received_at", allow_null=True)
    windowStart = serializers.DateTimeField(source="window_start")
    counts = WebhookCountsSerializer(source="*", help_text="By outcome over 24 h.")
    byType = serializers.DictField(
        source="by_type", child=serializers.IntegerField(), help_text="By event type over 24 h."
    )
    lastFailure = WebhookFailureSerializer(source="last_failure", allow_null=True)
