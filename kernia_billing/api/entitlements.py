"""REST doors to check, track and the usage ledger: validate -> service -> render.

- ``POST billing/check``: always 200 with ``allowed`` true/false (unknown feature 404).
- ``POST billing/track``: 201 with the recorded event; a repeated ``idempotencyKey``
  with the same payload answers 201 again with the first result and
  ``replayed: true`` (header ``Idempotent-Replayed: true``), counted once.
- ``GET billing/usage``: the ledger, newest first, keyset pages (``next`` carries a
  ``cursor``; limit/offset still work), a count capped at 10,000, filters ``feature``,
  ``from``, ``to``; ``daily=true`` adds per-day totals from the daily rollups.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from .. import selectors
from ..conf import billing_settings
from ..selectors import get_customer
from ..services import usage
from .base import BillingAPIView
from .owners import IsBillingCaller, OwnerMixin
from .schema import extend_schema
from .serializers import (
    CheckResultSerializer,
    CheckSerializer,
    ErrorSerializer,
    TrackResultSerializer,
    TrackSerializer,
    UsagePageSerializer,
    UsageQuerySerializer,
    encode_cursor,
    plain_check_data,
    plain_track_data,
    render_check,
    render_track,
)

TAG = "entitlements"


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


READ_AUTH_ERRORS = {
    401: _error("Not signed in (token authentication)."),
    403: _error("Not signed in (session), or not allowed to act for the named owner."),
    429: _error("Throttled (scope kernia_billing)."),
}
AUTH_ERRORS = {**READ_AUTH_ERRORS, 415: _error("The body is not application/json.")}


class CheckView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_check",
        summary="May the owner use a feature now?",
        description="Never records usage. Denials answer 200 with allowed=false and a reason "
        "(not_included, insufficient_balance, no_plan).",
        request=CheckSerializer,
        responses={
            200: CheckResultSerializer,
            400: _error("Bad input (invalid_request, invalid_json)."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            **AUTH_ERRORS,
        },
        examples=[
            OpenApiExample("Check", value={"feature": "messages", "required": 1}, request_only=True)
        ],
    )
    def post(self, request: Request) -> Response:
        data = plain_check_data(request.data, billing_settings.MAX_TRACK_AMOUNT)
        if data is None:
            serializer = CheckSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        owner = self.get_owner(data)
        result = usage.check(
            owner, data["feature"], required=data["required"], breakdown=data["breakdown"]
        )
        return Response(render_check(result))


class TrackView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_track",
        summary="Record usage where the product action succeeded.",
        description="Metered amounts are positive integers; seats/quantity amounts are "
        "non-zero integers and usage never goes below zero. A repeated idempotencyKey with "
        "the same payload returns the first result with replayed=true (status 201 again).",
        request=TrackSerializer,
        responses={
            201: TrackResultSerializer,
            400: _error("Bad input, or not_trackable (boolean feature)."),
            402: _error("not_included, insufficient_balance or no_plan: nothing recorded."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            409: _error("idempotency_conflict, or usage_below_zero."),
            **AUTH_ERRORS,
        },
        examples=[
            OpenApiExample(
                "Track",
                value={"feature": "messages", "amount": 1, "idempotencyKey": "msg_123"},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = plain_track_data(request.data, billing_settings.MAX_TRACK_AMOUNT)
        if data is None:
            serializer = TrackSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        owner = self.get_owner(data)
        result = usage.track(
            owner,
            data["feature"],
            data["amount"],
            idempotency_key=data.get("idempotencyKey") or None,
            properties=data.get("properties"),
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return Response(render_track(result), status=status.HTTP_201_CREATED, headers=headers)


class UsageView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_usage",
        summary="Usage history (the ledger), newest first.",
        description="Pages: `next` carries a keyset `cursor` (every page costs what the "
        "first costs); `limit`/`offset` still work. `count` is exact up to 10,000 "
        "(`countCapped` says when more match). `from` is inclusive, `to` exclusive. With "
        "daily=true the answer also carries `daily`: totals per UTC day and feature over all "
        "matching events (not only this page), for charts, read from the daily rollups.",
        parameters=[UsageQuerySerializer],
        responses={
            200: UsagePageSerializer,
            400: _error("Bad query parameters."),
            404: _error("unknown_feature, unknown_owner or unknown_customer."),
            **READ_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        owner = self.get_owner(params)
        feature_id = selectors.feature_filter_id(params.get("feature"))
        customer = get_customer(owner)  # a read: no customer is created here
        features = selectors.history_features(customer.pk if customer else None, feature_id)
        events = selectors.usage_events(
            customer.pk if customer else None,
            feature_id=feature_id,
            since=params.get("from"),
            until=params.get("to"),
            features=features,
        )
        limit, offset = params["limit"], params["offset"]
        count, capped = selectors.capped_count(events)
        cursor = params.get("cursor")
        if cursor is None:
            # One row more than the page says whether there is a next page.
            results = selectors.history_page(events, features, offset, offset + limit + 1)
            more, results = len(results) > limit, results[:limit]
            following = self._cursor(request, limit, results[-1]) if more else None
            preceding = self._link(request, limit, max(offset - limit, 0)) if offset else None
        else:
            at, event_id, newer = cursor
            offset = 0
            if newer:  # the previous page: the `limit` events just newer, oldest first
                earlier = selectors.events_after(events, at, event_id)
                results = selectors.history_page(earlier, features, 0, limit + 1, oldest_first=True)
                more, results = len(results) > limit, results[:limit][::-1]
                following = self._cursor(request, limit, results[-1]) if results else None
                preceding = self._cursor(request, limit, results[0], newer=True) if more else None
            else:
                later = selectors.events_before(events, at, event_id)
                results = selectors.history_page(later, features, 0, limit + 1)
                more, results = len(results) > limit, results[:limit]
                following = self._cursor(request, limit, results[-1]) if more else None
                preceding = (
                    self._cursor(request, limit, results[0], newer=True) if results else None
                )
        page: dict[str, Any] = {
            "count": count,
            "count_capped": capped,
            "limit": limit,
            "offset": offset,
            "next": following,
            "previous": preceding,
            "results": results,
        }
        if params["daily"]:
            page["daily"] = selectors.daily_usage(
                customer.pk if customer else None,
                feature_id=feature_id,
                since=params.get("from"),
                until=params.get("to"),
            )
        return Response(UsagePageSerializer(page).data)

    @staticmethod
    def _link(request: Request, limit: int, offset: int) -> str:
        url = replace_query_param(request.build_absolute_uri(), "limit", limit)
        url = remove_query_param(url, "cursor")
        if offset <= 0:
            return remove_query_param(url, "offset")
        return replace_query_param(url, "offset", offset)

    @staticmethod
    def _cursor(request: Request, limit: int, event: Any, *, newer: bool = False) -> str:
        """A keyset page link: every page costs what the first one costs."""
        url = replace_query_param(request.build_absolute_uri(), "limit", limit)
        url = remove_query_param(url, "offset")
        position = encode_cursor(event.created_at, event.pk, newer=newer)
        return replace_query_param(url, "cursor", position)
