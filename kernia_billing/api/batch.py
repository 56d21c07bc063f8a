"""REST door to batch track: ``POST billing/track/batch``.

Up to ``MAX_BATCH_SIZE`` events in one request, each answered on its own as
``POST billing/track`` would answer it (same codes, same statuses), in the order
sent. The request answers 400 when its envelope or any event's shape is invalid (as
documented in the schema, naming the events by index); otherwise 200, and an event
that single track would refuse (balance, idempotency conflict, unknown feature, an
owner the caller may not act for ...) is refused on its own without failing its
neighbours.

Owner: the top-level ``organizationId`` (or, for staff, ``customerId``/``userId``)
applies to every event, else the signed-in user. Staff holding the manage
permission may also name an owner per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from drf_spectacular.utils import OpenApiExample
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ..conf import billing_settings
from ..exceptions import BillingError
from ..services import usage
from ..types import BatchItemResult, TrackRequest
from .base import BillingAPIView
from .entitlements import AUTH_ERRORS, TAG, _error
from .exceptions import describe_api_exception
from .owners import (
    OWNER_FIELDS,
    IsBillingCaller,
    OwnerMixin,
    can_manage_billing,
    owner_identifiers,
)
from .schema import extend_schema
from .serializers import (
    ErrorDetailSerializer,
    OwnerSerializer,
    TrackSerializer,
    plain_track_data,
    render_track,
)

_OWNER_FIELDS = frozenset(OWNER_FIELDS)


class BatchEventSerializer(TrackSerializer):
    """One event: as single track's body; ``customerId``/``userId``/``organizationId`` here
    are for staff callers only."""


class EventListField(serializers.ListField):
    """A list of JSON objects; each is validated on its own, by the view."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if type(data) is list and all(type(event) is dict for event in data):
            return [dict(event) for event in data]  # what the child DictField gives back
        return super().to_internal_value(data)  # and its errors, by index


class BatchTrackSerializer(OwnerSerializer):
    """``{"events": [...], organizationId?}``; each event is validated on its own."""

    events = EventListField(
        child=serializers.DictField(),
        allow_empty=True,
        help_text="At most MAX_BATCH_SIZE (default 1,000) events, answered in order.",
    )

    def validate_events(self, value: list[Any]) -> list[Any]:
        limit = billing_settings.MAX_BATCH_SIZE
        if len(value) > limit:
            raise serializers.ValidationError(f"A batch holds at most {limit} events.")
        return value


class BatchTrackRequestSerializer(OwnerSerializer):
    """Schema only: the request with typed events (validation is per event, in the view)."""

    events = BatchEventSerializer(many=True, help_text="At most 1,000 events, answered in order.")


class BatchItemSerializer(serializers.Serializer):
    """One event's answer: the track result (``ok: true``), or ``ok: false`` with ``error``."""

    index = serializers.IntegerField(help_text="Position of the event in the request.")
    ok = serializers.BooleanField()
    status = serializers.IntegerField(
        help_text="What single track would have answered: 201 accepted, else the error status."
    )
    eventId = serializers.IntegerField(required=False)
    feature = serializers.CharField(required=False)
    amount = serializers.IntegerField(required=False)
    balance = serializers.IntegerField(required=False)
    usage = serializers.IntegerField(required=False)
    included = serializers.IntegerField(required=False)
    unlimited = serializers.BooleanField(required=False)
    replayed = serializers.BooleanField(
        required=False, help_text="True when this answers a repeated idempotencyKey."
    )
    createdAt = serializers.DateTimeField(required=False)
    creditBalance = serializers.IntegerField(
        required=False, help_text="Credit pools: the pool's credits (pool features only)."
    )
    creditCost = serializers.IntegerField(
        required=False, help_text="Credit pools: credits per unit (pool features only)."
    )
    error = ErrorDetailSerializer(required=False, help_text="Only when ok is false.")


class BatchResultSerializer(serializers.Serializer):
    results = BatchItemSerializer(many=True)


class BatchTrackView(OwnerMixin, BillingAPIView):
    permission_classes = [IsBillingCaller]

    @extend_schema(
        tags=[TAG],
        operation_id="billing_track_batch",
        summary="Record many usage events at once, each answered on its own.",
        description="Each event is exact and idempotent as in single track; `results` holds "
        "one answer per event in request order: the track result (`ok: true`, `status` 201) "
        "or the error single track would give (`ok: false`, `status`, `error`). Per-event "
        "customerId/userId/organizationId are for staff with the manage permission.",
        request=BatchTrackRequestSerializer,
        responses={
            200: BatchResultSerializer,
            400: _error(
                "Bad envelope (events missing, not a list, over the limit) or an event of "
                "the wrong shape; fields.events names the events by index."
            ),
            404: _error("Unknown organization, user or customer named at the top level."),
            **AUTH_ERRORS,
        },
        examples=[
            OpenApiExample(
                "Batch",
                value={
                    "events": [
                        {"feature": "messages", "amount": 1, "idempotencyKey": "msg_1"},
                        {"feature": "messages", "amount": 2, "idempotencyKey": "msg_2"},
                    ]
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        envelope = BatchTrackSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        data = envelope.validated_data
        default_owner = self.get_owner(data)
        staff = can_manage_billing(request.user)
        events = self._validated_events(data["events"])
        owners: dict[tuple[tuple[str, str], ...], Any] = {}
        refused: dict[int, BatchItemResult] = {}
        requests: list[TrackRequest] = []
        positions: list[int] = []
        for index, event in enumerate(events):
            if _OWNER_FIELDS.isdisjoint(event):
                owner = default_owner  # most events: the request's owner
            else:
                try:
                    owner = self._event_owner(request, event, staff, default_owner, owners)
                except (BillingError, exceptions.APIException) as error:
                    refused[index] = _refusal(index, error)
                    continue
            positions.append(index)
            requests.append(
                TrackRequest(
                    event["feature"],
                    event["amount"],
                    event.get("idempotencyKey") or None,
                    event.get("properties") or {},
                    owner,
                )
            )
        answered = usage.track_batch(default_owner, requests) if requests else []
        if not refused:  # every event went to the service, in order: its indexes hold
            answered_in_order = answered
        else:
            for item in answered:
                refused[positions[item.index]] = _reindexed(item, positions[item.index])
            answered_in_order = [refused[index] for index in range(len(data["events"]))]
        datetimes: dict[Any, Any] = {}  # the batch's events share their moment
        return Response({"results": [_render(item, datetimes) for item in answered_in_order]})

    @staticmethod
    def _validated_events(raw_events: list[Any]) -> list[dict[str, Any]]:
        """Each event's shape, as single track validates it; any bad shape is a 400 for the
        whole request, naming the events by index (``fields.events["3"].amount``)."""
        validator = BatchEventSerializer()  # one instance: 1,000 constructions cost ~0.2 s
        limit = billing_settings.MAX_TRACK_AMOUNT
        events: list[dict[str, Any]] = []
        errors: dict[str, Any] = {}
        for index, raw in enumerate(raw_events):
            plain = plain_track_data(raw, limit)
            if plain is not None:
                events.append(plain)
                continue
            try:
                events.append(validator.run_validation(raw))
            except serializers.ValidationError as error:
                errors[str(index)] = error.detail
        if errors:
            raise serializers.ValidationError({"events": errors})
        return events

    def _event_owner(
        self,
        request: Request,
        event: Mapping[str, Any],
        staff: bool,
        default_owner: Any,
        owners: dict[tuple[tuple[str, str], ...], Any],
    ) -> Any:
        identifiers = owner_identifiers(event)
        if not identifiers:
            return default_owner
        if not staff:
            raise exceptions.PermissionDenied(
                "Only staff with the manage permission may name an owner per event."
            )
        key = tuple(sorted((name, str(value)) for name, value in identifiers.items()))
        if key not in owners:
            owners[key] = self.get_owner(identifiers)
        return owners[key]


def _refusal(index: int, error: BillingError | exceptions.APIException) -> BatchItemResult:
    if isinstance(error, BillingError):
        return usage.refusal(index, error)
    code, message, fields = describe_api_exception(error)
    return BatchItemResult(
        index=index,
        ok=False,
        error_code=code,
        error_message=message,
        error_fields=fields,
        status=error.status_code,
    )


def _reindexed(item: BatchItemResult, index: int) -> BatchItemResult:
    return item if item.index == index else replace(item, index=index)


def _render(item: BatchItemResult, datetimes: dict[Any, Any]) -> dict[str, Any]:
    """Hand-rendered (1,000 items through a serializer cost more than the database work)."""
    if not item.ok or item.result is None:
        return {
            "index": item.index,
            "ok": False,
            "status": item.status,
            "error": {
                "code": item.error_code or "error",
                "message": item.error_message or "",
                "fields": item.error_fields or {},
            },
        }
    rendered = render_track(item.result, datetimes=datetimes)
    return {"index": item.index, "ok": True, "status": item.status, **rendered}
