"""REST doors to the Stripe lifecycle: validate -> service -> render.

- ``GET billing/customer``: Stripe customer, subscription, plan, portal, entitlements.
- ``POST billing/checkout``: a Stripe Checkout Session for a plan's price -> ``{url}``.
- ``GET billing/checkout/return?session_id=...&next=...``: where Stripe sends the
  customer back; applies the new subscription at once, then redirects to ``next``
  (an allowed host) or answers JSON.
- ``POST billing/portal``: a billing portal session -> ``{url}``.
- ``GET billing/webhooks/health``: staff; webhook outcomes over 24 hours.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.http import HttpResponseRedirect
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from ..selectors import webhook_health
from ..services import checkout
from ..services.customers import customer_state
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, READ_AUTH_ERRORS, _error
from .lifecycle_serializers import (
    CheckoutResultSerializer,
    CheckoutReturnQuerySerializer,
    CheckoutReturnSerializer,
    CheckoutSerializer,
    CustomerStateSerializer,
    PortalSerializer,
    UrlSerializer,
    WebhookHealthSerializer,
)
from .owners import IsBillingCaller, OwnerMixin
from .permissions import CanManageBilling
from .schema import extend_schema
from .serializers import OwnerSerializer

TAG = "lifecycle"
STRIPE_ERROR = _error("stripe_error: Stripe failed or could not be reached; nothing was changed.")


def _return_url(request: Request, url: str | None, *, field: str) -> str:
    """The caller's URL, validated; else this site's root (its own host, never checked
    against REDIRECT_ALLOWED_HOSTS, so it works with ``ALLOWED_HOSTS = ["*"]`` too)."""
    if url:
        return checkout.validate_redirect_url(url, field=field)
    return request.build_absolute_uri("/")


class CustomerView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_customer",
        summary="The owner's Stripe customer, subscription, plan and entitlements.",
        parameters=[OwnerSerializer],
        responses={
            200: CustomerStateSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_owner or unknown_customer."),
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = OwnerSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        state = customer_state(self.get_owner(query.validated_data))
        data = asdict(state)
        data["plan"] = {"key": state.plan, "name": state.plan_name} if state.plan else None
        return Response(CustomerStateSerializer(data).data)


class CheckoutView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_checkout",
        summary="Open a Stripe Checkout Session for a plan's price.",
        description="Creates the owner's Stripe customer on first use. successUrl and "
        "cancelUrl must be absolute URLs on ALLOWED_HOSTS or "
        "KERNIA_BILLING['REDIRECT_ALLOWED_HOSTS'] (a '*' in ALLOWED_HOSTS allows nothing). "
        "Stripe returns the customer through billing/checkout/return, which applies the new "
        "plan at once and then redirects to successUrl. A customer whose subscription "
        "already entitles gets 409 already_subscribed: plan changes go through the portal.",
        request=CheckoutSerializer,
        responses={
            200: CheckoutResultSerializer,
            400: _error("Bad input, a URL on another host, or a plan without a price."),
            404: _error("unknown_plan, unknown_owner or unknown_customer."),
            409: _error("already_subscribed: change plans in the billing portal."),
            502: STRIPE_ERROR,
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = CheckoutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = self.get_owner(data)
        next_url = data.get("successUrl")
        if next_url:
            checkout.validate_redirect_url(next_url, field="successUrl")
        cancel_url = _return_url(request, data.get("cancelUrl"), field="cancelUrl")
        back = request.build_absolute_uri(reverse("kernia_billing:billing-checkout-return"))
        result = checkout.start_checkout(
            owner,
            plan=data.get("plan"),
            interval=data.get("interval"),
            price=data.get("price"),
            quantity=data.get("quantity"),
            success_url=checkout.return_url(back, next_url=next_url),
            cancel_url=cancel_url,
        )
        return Response(CheckoutResultSerializer(result).data)


class CheckoutReturnView(BillingAPIView):
    """Stripe's success URL. A Checkout Session id is unguessable and the state applied is
    re-read from Stripe, so this works without a session cookie (e.g. token-auth SPAs)."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    def get_authenticators(self) -> list[Any]:
        return []

    @extend_schema(
        tags=[TAG],
        operation_id="billing_checkout_return",
        summary="Return from Stripe Checkout: apply the new subscription now.",
        parameters=[CheckoutReturnQuerySerializer],
        responses={
            200: CheckoutReturnSerializer,
            302: OpenApiResponse(description="Redirect to `next` (an allowed host)."),
            400: _error("Missing session_id, unknown session, or `next` on another host."),
            502: STRIPE_ERROR,
        },
    )
    def get(self, request: Request) -> Response | HttpResponseRedirect:
        query = CheckoutReturnQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        next_url = params.get("next")
        if next_url:
            checkout.validate_redirect_url(next_url, field="next")
        result = checkout.complete_checkout(params["session_id"])
        if next_url:
            return HttpResponseRedirect(next_url)
        return Response(CheckoutReturnSerializer(result).data)


class PortalView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_portal",
        summary="Open a Stripe billing portal session.",
        request=PortalSerializer,
        responses={
            200: UrlSerializer,
            400: _error("Bad input, or returnUrl on another host."),
            404: _error("unknown_owner or unknown_customer."),
            409: _error("no_stripe_customer: subscribe through checkout first."),
            502: STRIPE_ERROR,
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = PortalSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = self.get_owner(data)
        url = _return_url(request, data.get("returnUrl"), field="returnUrl")
        result = checkout.start_portal(owner, return_url=url)
        return Response(UrlSerializer(result).data)


class WebhookHealthView(BillingAPIView):
    permission_classes = [CanManageBilling]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_webhooks_health",
        summary="Webhook deliveries over the last 24 hours (staff).",
        description="Outcomes: processed, failed (a receiver raised; Stripe retries), "
        "invalidSignature (refused). lastFailure is the newest failure at any time.",
        responses={200: WebhookHealthSerializer, **READ_AUTH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(WebhookHealthSerializer(webhook_health()).data)
