"""REST doors to reservations: hold before the work, settle with the actual amount.

- ``POST billing/reservations`` ``{feature, amount, ttlSeconds?, idempotencyKey?,
  properties?}``: 201 with the reservation; refused as track is (402). A repeated
  ``idempotencyKey`` with the same payload answers the first one with ``replayed: true``.
- ``POST billing/reservations/{id}/confirm`` ``{actual?, idempotencyKey?}``: 200; records
  the actual usage (default: the reserved amount), gives back the rest. 409
  ``reservation_expired`` after ``expiresAt``, ``reservation_closed`` after a release.
- ``POST billing/reservations/{id}/release``: 200; gives everything back (idempotent).
- ``GET billing/reservations``: the owner's open reservations, ``feature`` filter.

Owner rules as check and track; another owner's reservation is 404 ``unknown_reservation``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ..exceptions import UnknownReservation
from ..selectors import get_customer
from ..services.reservations import holds, reads, settle
from ..services.usage.validation import MAX_IDEMPOTENCY_KEY_LENGTH
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, READ_AUTH_ERRORS
from .owners import IsBillingCaller, OwnerMixin
from .schema import extend_schema
from .serializers import (
    MAX_FEATURE_KEY_LENGTH,
    ErrorSerializer,
    FlatFieldsMixin,
    NoBlankTypedParamsMixin,
    OwnerSerializer,
    StrictCharField,
    StrictIntegerField,
)

TAG = "reservations"
_MAX_TTL_SECONDS = int(holds.MAX_TTL.total_seconds())


class ReserveSerializer(FlatFieldsMixin, OwnerSerializer):
    feature = StrictCharField(max_length=MAX_FEATURE_KEY_LENGTH, help_text="Feature key.")
    amount = StrictIntegerField(min_value=1, help_text="Units to hold (the estimate).")
    ttlSeconds = StrictIntegerField(
        required=False,
        default=int(holds.DEFAULT_TTL.total_seconds()),
        min_value=1,
        max_value=_MAX_TTL_SECONDS,
        help_text="Seconds until the hold is given back unless confirmed (default 600).",
    )
    idempotencyKey = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )
    properties = serializers.DictField(
        required=False, allow_null=True, help_text="Stored on the ledger row of the confirm."
    )


class ConfirmSerializer(FlatFieldsMixin, OwnerSerializer):
    actual = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        help_text="The actual amount used (default: the reserved amount).",
    )
    idempotencyKey = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        help_text="Idempotency key of the ledger row the confirm writes.",
    )


class ReservationListQuerySerializer(NoBlankTypedParamsMixin, OwnerSerializer):
    feature = serializers.CharField(required=False, max_length=MAX_FEATURE_KEY_LENGTH)


class ReservationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    feature = serializers.CharField()
    amount = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["open", "confirmed", "released", "expired"])
    expiresAt = serializers.DateTimeField(source="expires_at")
    createdAt = serializers.DateTimeField(source="created_at")
    closedAt = serializers.DateTimeField(source="closed_at", allow_null=True)
    actual = serializers.IntegerField(allow_null=True)
    eventId = serializers.IntegerField(source="event_id", allow_null=True)
    balance = serializers.IntegerField(
        allow_null=True, help_text="Spendable balance after this call, when it changed it."
    )
    creditCost = serializers.IntegerField(source="credit_cost", allow_null=True)
    replayed = serializers.BooleanField()


class ReservationListSerializer(serializers.Serializer):
    results = ReservationSerializer(many=True)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


def _render(result: reads.ReservationResult, **kwargs: Any) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(ReservationSerializer(result).data, headers=headers, **kwargs)


class ReservationsView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_reservations_list",
        summary="The owner's open reservations, soonest-expiring first.",
        parameters=[ReservationListQuerySerializer],
        responses={
            200: ReservationListSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_owner or unknown_customer."),
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = ReservationListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        customer = get_customer(self.get_owner(params))
        results = reads.list_reservations(
            customer.pk if customer else None, feature=params.get("feature")
        )
        return Response({"results": ReservationSerializer(results, many=True).data})

    @extend_schema(
        tags=[TAG],
        operation_id="billing_reservations_create",
        summary="Hold balance before the work (an estimate), until confirmed or expired.",
        request=ReserveSerializer,
        responses={
            201: ReservationSerializer,
            400: _error("Bad input, or a feature that cannot be reserved."),
            402: _error("not_included, insufficient_balance or no_plan: nothing held."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            409: _error("idempotency_conflict"),
            **AUTH_ERRORS,
        },
        examples=[
            OpenApiExample(
                "Reserve",
                value={"feature": "tokens", "amount": 4000, "ttlSeconds": 300},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = ReserveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = holds.reserve(
            self.get_owner(data),
            data["feature"],
            data["amount"],
            ttl=timedelta(seconds=data["ttlSeconds"]),
            idempotency_key=data.get("idempotencyKey") or None,
            properties=data.get("properties"),
        )
        return _render(result, status=status.HTTP_201_CREATED)


class _OwnReservation(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    def check_owner(self, data: dict[str, Any], reservation_id: int) -> None:
        customer = get_customer(self.get_owner(data))
        if customer is None or reads.customer_of(reservation_id) != customer.pk:
            raise UnknownReservation(fields={"reservation": reservation_id})


class ConfirmView(_OwnReservation):
    @extend_schema(
        tags=[TAG],
        operation_id="billing_reservations_confirm",
        summary="Record the actual usage and give back the rest of the hold.",
        request=ConfirmSerializer,
        responses={
            200: ReservationSerializer,
            400: _error("Bad input."),
            402: _error("insufficient_balance: more than reserved and the balance is short."),
            404: _error("unknown_reservation, unknown_owner or unknown_customer."),
            409: _error("reservation_expired, reservation_closed or idempotency_conflict."),
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request, reservation_id: int) -> Response:
        serializer = ConfirmSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        self.check_owner(data, reservation_id)
        result = settle.confirm(
            reservation_id,
            actual=data.get("actual"),
            idempotency_key=data.get("idempotencyKey") or None,
        )
        return _render(result)


class ReleaseView(_OwnReservation):
    @extend_schema(
        tags=[TAG],
        operation_id="billing_reservations_release",
        summary="Give the whole hold back (idempotent).",
        request=OwnerSerializer,
        responses={
            200: ReservationSerializer,
            400: _error("Bad input (owner identifiers)."),
            404: _error("unknown_reservation, unknown_owner or unknown_customer."),
            409: _error("reservation_closed: it was confirmed."),
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request, reservation_id: int) -> Response:
        serializer = OwnerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.check_owner(serializer.validated_data, reservation_id)
        return _render(settle.release(reservation_id))
