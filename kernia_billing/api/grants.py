"""REST doors to grants: ``POST billing/grants`` (staff) and ``GET billing/grants`` (owner).

- ``POST billing/grants``: staff with the manage permission name the customer
  (``customerId``, ``userId`` or ``organizationId``) and give ``amount`` of ``feature``
  (negative: a clawback of unconsumed amount), optionally expiring; 201 with the grant.
  A repeated ``idempotencyKey`` answers the first grant.
- ``GET billing/grants``: the owner's grants, newest first, ``feature`` filter; expired
  and revoked ones are included and flagged.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..models import Grant, GrantSource
from ..selectors import get_customer
from ..services.grants import issue
from ..services.grants.totals import customer_grants
from ..services.usage.validation import MAX_IDEMPOTENCY_KEY_LENGTH
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, READ_AUTH_ERRORS
from .owners import IsBillingCaller, OwnerMixin
from .permissions import CanManageBilling
from .schema import extend_schema
from .serializers import (
    MAX_FEATURE_KEY_LENGTH,
    ErrorSerializer,
    NoBlankTypedParamsMixin,
    OwnerSerializer,
    StrictCharField,
    StrictIntegerField,
)

TAG = "grants"


class GrantRequestSerializer(OwnerSerializer):
    feature = StrictCharField(max_length=MAX_FEATURE_KEY_LENGTH, help_text="Feature key.")
    amount = StrictIntegerField(help_text="Units to give; negative takes unconsumed units back.")
    expiresAt = serializers.DateTimeField(required=False, allow_null=True)
    reason = StrictCharField(required=False, allow_blank=True, max_length=issue.MAX_REASON_LENGTH)
    source = serializers.ChoiceField(  # type: ignore[assignment]  # a field, not Field.source
        choices=[GrantSource.ADJUSTMENT.value, GrantSource.PROMOTION.value],
        required=False,
        default=GrantSource.ADJUSTMENT.value,
    )
    idempotencyKey = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )


class GrantListQuerySerializer(NoBlankTypedParamsMixin, OwnerSerializer):
    feature = serializers.CharField(required=False, max_length=MAX_FEATURE_KEY_LENGTH)


class GrantSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    feature = serializers.CharField(source="feature.key")
    source = serializers.CharField()  # type: ignore[assignment]  # a field, not Field.source
    amount = serializers.IntegerField()
    consumed = serializers.IntegerField()
    expired = serializers.IntegerField()
    revoked = serializers.IntegerField()
    remaining = serializers.IntegerField()
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)
    isExpired = serializers.SerializerMethodField()
    isRevoked = serializers.SerializerMethodField()
    reason = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")

    def get_isExpired(self, grant: Grant) -> bool:
        return grant.expires_at is not None and grant.expires_at <= timezone.now()

    def get_isRevoked(self, grant: Grant) -> bool:
        return grant.revoked_at is not None


class GrantListSerializer(serializers.Serializer):
    results = GrantSerializer(many=True)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


class GrantsView(OwnerMixin, BillingAPIView):
    def get_permissions(self) -> list[Any]:
        if self.request.method == "POST":
            return [CanManageBilling()]
        return [IsBillingCaller()]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_grants_list",
        summary="The owner's grants (expired and revoked included, flagged).",
        parameters=[GrantListQuerySerializer],
        responses={
            200: GrantListSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = GrantListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        owner = self.get_owner(params)
        feature_id = selectors.feature_filter_id(params.get("feature"))
        customer = get_customer(owner)
        grants = customer_grants(customer.pk if customer else None, feature_id=feature_id)
        return Response({"results": GrantSerializer(grants, many=True).data})

    @extend_schema(
        tags=[TAG],
        operation_id="billing_grants_create",
        summary="Give (or claw back) credits: staff with the manage permission only.",
        request=GrantRequestSerializer,
        responses={
            201: GrantSerializer,
            400: _error("Bad input."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            409: _error("idempotency_conflict"),
            **AUTH_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = GrantRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        owner = self.get_owner(data)
        grant = issue.grant(
            owner,
            data["feature"],
            data["amount"],
            expires_at=data.get("expiresAt"),
            reason=data.get("reason", ""),
            idempotency_key=data.get("idempotencyKey") or None,
            granted_by=request.user,
            source=data["source"],
        )
        return Response(GrantSerializer(grant).data, status=status.HTTP_201_CREATED)
