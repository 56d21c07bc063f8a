"""Serializers: JSON shape only (camelCase in and out). Rules live in the services."""

from __future__ import annotations

import base64
import binascii
import copy
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..conf import billing_settings
from ..hygiene import unstorable
from ..services.usage.validation import MAX_IDEMPOTENCY_KEY_LENGTH
from ..types import CheckResult, TrackResult
from .owners import MAX_OWNER_ID_LENGTH

MAX_FEATURE_KEY_LENGTH = 100


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: no floats, numeric strings or booleans; bounded by MAX_TRACK_AMOUNT.

    The bound is read when validating, never at import (``override_settings`` works).
    """

    default_error_messages = {
        "invalid": "Must be an integer.",
        "too_large": "Must be at most {limit} in size.",
    }

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        limit = billing_settings.MAX_TRACK_AMOUNT
        if abs(data) > limit:
            self.fail("too_large", limit=limit)
        return int(super().to_internal_value(data))


class StrictCharField(serializers.CharField):
    """A JSON string: numbers and booleans are not silently turned into text."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean: no 0/1, no "true"/"false" strings."""

    default_error_messages = {"invalid": "Must be a boolean."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


@extend_schema_field(
    {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": MAX_OWNER_ID_LENGTH}]}
)
class OwnerIdField(serializers.Field):
    """An owner's id as a JSON integer or string; its meaning is checked in ``owners.py``."""

    default_error_messages = {
        "invalid": "Must be an id (integer or string).",
        "unstorable": "Must not contain {reason}.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        if isinstance(data, str) and len(data) > MAX_OWNER_ID_LENGTH:
            self.fail("invalid")
        reason = unstorable(data) if isinstance(data, str) else None
        if reason:
            self.fail("unstorable", reason=reason)
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class OwnerSerializer(serializers.Serializer):
    """Who is billed; omit all three to act for the signed-in user."""

    organizationId = OwnerIdField(
        required=False, allow_null=True, help_text="An organization you are a member of."
    )
    customerId = OwnerIdField(
        required=False, allow_null=True, help_text="Billing customer id (staff only)."
    )
    userId = OwnerIdField(required=False, allow_null=True, help_text="User id (staff only).")


class FlatFieldsMixin:
    """Copy declared fields shallowly per instance instead of deep-copying them.

    DRF deep-copies every declared field for every serializer instance, which
    re-runs each field's ``__init__``: on ``billing/check`` that cost more than the
    database query. For flat serializers (scalar fields; a DictField's child is
    stateless) a shallow copy is equivalent: ``bind()`` and the lazily built
    validators land on the copy, and nothing else on a field changes while validating.
    """

    _declared_fields: dict[str, serializers.Field]

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class CheckSerializer(FlatFieldsMixin, OwnerSerializer):
    """``{feature, required?=1}`` plus an optional owner (organizationId, or staff ids)."""

    feature = StrictCharField(max_length=MAX_FEATURE_KEY_LENGTH, help_text="Feature key.")
    required = StrictIntegerField(  # type: ignore[assignment]  # a field, not Field.required
        required=False, default=1, min_value=0, help_text="Units the action needs (default 1)."
    )
    breakdown = StrictBooleanField(
        required=False, default=False, help_text="Add the grants the balance is made of."
    )


class TrackSerializer(FlatFieldsMixin, OwnerSerializer):
    """``{feature, amount?=1, idempotencyKey?, properties?}`` plus an optional owner."""

    feature = StrictCharField(max_length=MAX_FEATURE_KEY_LENGTH, help_text="Feature key.")
    amount = StrictIntegerField(
        required=False,
        default=1,
        help_text="Metered: a positive integer. Seats/quantity: a non-zero integer.",
    )
    idempotencyKey = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        help_text="Repeat with the same payload to get the first result back, counted once.",
    )
    properties = serializers.DictField(
        required=False, allow_null=True, help_text="Free-form JSON object stored on the event."
    )


class GrantPartSerializer(serializers.Serializer):
    """One source of a balance: the plan's grant (expiresAt: its next reset) or a grant."""

    source = serializers.CharField(  # type: ignore[assignment]  # a field, not Field.source
        help_text="plan, addon, topup, adjustment, rollover, promotion"
    )
    remaining = serializers.IntegerField()
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)


class OverageEstimateSerializer(serializers.Serializer):
    feature = serializers.CharField()
    units = serializers.IntegerField(help_text="Overage units this period.")
    unit = serializers.CharField()
    estimatedAmount = serializers.IntegerField(
        source="estimated_amount", allow_null=True, help_text="Minor units, from the price."
    )
    currency = serializers.CharField()
    display = serializers.CharField(help_text='e.g. "270 messages · $2.70"')


class CheckResultSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    reason = serializers.ChoiceField(
        choices=["not_included", "insufficient_balance", "no_plan"],
        allow_null=True,
        help_text="Why the check was denied; null when allowed.",
    )
    feature = serializers.CharField()
    kind = serializers.CharField(help_text="boolean, metered, seats or quantity.")
    balance = serializers.IntegerField(allow_null=True, help_text="Null if unlimited/boolean.")
    included = serializers.IntegerField(allow_null=True)
    usage = serializers.IntegerField(allow_null=True)
    unlimited = serializers.BooleanField()
    allowOverage = serializers.BooleanField(source="allow_overage")
    resetPeriod = serializers.CharField(source="reset_period", allow_null=True)
    nextResetAt = serializers.DateTimeField(source="next_reset_at", allow_null=True)
    plan = serializers.CharField(allow_null=True, help_text="Key of the customer's plan.")
    nextExpiry = serializers.DateTimeField(
        source="next_expiry",
        allow_null=True,
        required=False,
        help_text='With "breakdown": true: the soonest expiry of a grant.',
    )
    grants = GrantPartSerializer(
        many=True,
        required=False,
        help_text='With "breakdown": true: the sources of the balance, in draw order.',
    )

    creditBalance = serializers.IntegerField(
        source="credit_balance", required=False, help_text="Credit pools: the pool's credits."
    )
    creditCost = serializers.IntegerField(
        source="credit_cost", required=False, help_text="Credit pools: credits per unit."
    )
    overage = OverageEstimateSerializer(
        required=False,
        help_text="Features allowing overage: this period's overage and its estimated charge.",
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = dict(super().to_representation(instance))
        if getattr(instance, "grants", None) is None:
            data.pop("nextExpiry", None)
            data.pop("grants", None)
        if getattr(instance, "overage", None) is None:
            data.pop("overage", None)
        return _without_credits(data, instance)


def _without_credits(data: dict[str, Any], instance: Any) -> dict[str, Any]:
    if getattr(instance, "credit_cost", None) is None:
        data.pop("creditBalance", None)
        data.pop("creditCost", None)
    return data


class TrackResultSerializer(serializers.Serializer):
    eventId = serializers.IntegerField(source="event_id")
    feature = serializers.CharField()
    amount = serializers.IntegerField()
    balance = serializers.IntegerField()
    usage = serializers.IntegerField()
    included = serializers.IntegerField()
    unlimited = serializers.BooleanField()
    replayed = serializers.BooleanField(
        help_text="True when this answers a repeated idempotencyKey (counted once)."
    )
    createdAt = serializers.DateTimeField(source="created_at")
    creditBalance = serializers.IntegerField(
        source="credit_balance", required=False, help_text="Credit pools: the pool's credits."
    )
    creditCost = serializers.IntegerField(
        source="credit_cost", required=False, help_text="Credit pools: credits per unit."
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return _without_credits(dict(super().to_representation(instance)), instance)


# The hot endpoints render their results directly: building a DRF serializer per
# response costs more than the database work of a check. The serializers above stay
# the schema; tests/api/test_renderers.py keeps the two in step.
_DATETIME = serializers.DateTimeField()


def _datetime(value: Any) -> Any:
    return None if value is None else _DATETIME.to_representation(value)


def render_check(result: CheckResult) -> dict[str, Any]:
    """The ``CheckResultSerializer`` shape of a check result."""
    return {
        "allowed": result.allowed,
        "reason": result.reason,
        "feature": result.feature,
        "kind": result.kind,
        "balance": result.balance,
        "included": result.included,
        "usage": result.usage,
        "unlimited": result.unlimited,
        "allowOverage": result.allow_overage,
        "resetPeriod": result.reset_period,
        "nextResetAt": _datetime(result.next_reset_at),
        "plan": result.plan,
        **(
            {}
            if result.grants is None
            else {
                "nextExpiry": _datetime(result.next_expiry),
                "grants": render_grant_parts(result.grants),
            }
        ),
        **_credits(result),
        **({} if result.overage is None else {"overage": render_overage(result.overage)}),
    }


def render_overage(overage: Any) -> dict[str, Any]:
    return {
        "feature": overage.feature,
        "units": overage.units,
        "unit": overage.unit,
        "estimatedAmount": overage.estimated_amount,
        "currency": overage.currency,
        "display": overage.display,
    }


def _credits(result: Any) -> dict[str, Any]:
    if result.credit_cost is None:
        return {}
    return {"creditBalance": result.credit_balance, "creditCost": result.credit_cost}


def render_grant_parts(parts: Any) -> list[dict[str, Any]]:
    return [
        {"source": p.source, "remaining": p.remaining, "expiresAt": _datetime(p.expires_at)}
        for p in parts
    ]


def render_track(result: TrackResult, *, datetimes: dict[Any, Any] | None = None) -> dict[str, Any]:
    """The ``TrackResultSerializer`` shape of a track result; ``datetimes`` memoizes the
    rendering of times over one response's many results."""
    if datetimes is None:
        created_at = _datetime(result.created_at)
    elif result.created_at in datetimes:
        created_at = datetimes[result.created_at]
    else:
        created_at = datetimes[result.created_at] = _datetime(result.created_at)
    return {
        "eventId": result.event_id,
        "feature": result.feature,
        "amount": result.amount,
        "balance": result.balance,
        "usage": result.usage,
        "included": result.included,
        "unlimited": result.unlimited,
        "replayed": result.replayed,
        "createdAt": created_at,
        **_credits(result),
    }


# --- the common bodies of the hot endpoints, without a serializer -------------------------
# tests/api/test_plain_bodies.py checks each against its serializer.

_PLAIN_TRACK_KEYS = frozenset({"feature", "amount", "idempotencyKey", "properties"})
_PLAIN_CHECK_KEYS = frozenset({"feature", "required", "breakdown"})


def plain_track_data(raw: Any, amount_limit: int) -> dict[str, Any] | None:
    """What ``TrackSerializer`` would return for ``raw``, when ``raw`` is the common,
    plainly valid body; else None and the serializer decides (and words any error).

    Plain: no per-event owner, an ASCII feature key and idempotency key without NUL or
    surrounding blanks within their lengths, an integer amount within the limit, an
    object (or null) of properties. The serializer's walk over its fields costs ~0.1 ms
    per call: as much as the rest of a batch's work, or a tenth of a single track's.
    """
    if not isinstance(raw, dict) or not _PLAIN_TRACK_KEYS.issuperset(raw):
        return None
    feature = raw.get("feature")
    if not _plain_text(feature, MAX_FEATURE_KEY_LENGTH):
        return None
    event: dict[str, Any] = {"feature": feature, "amount": raw.get("amount", 1)}
    amount = event["amount"]
    if type(amount) is not int or abs(amount) > amount_limit:
        return None
    if "idempotencyKey" in raw:
        key = raw["idempotencyKey"]
        if key is not None and key != "" and not _plain_text(key, MAX_IDEMPOTENCY_KEY_LENGTH):
            return None
        event["idempotencyKey"] = key
    if "properties" in raw:
        properties = raw["properties"]
        if properties is not None and type(properties) is not dict:
            return None
        event["properties"] = None if properties is None else dict(properties)
    return event


def _plain_text(value: Any, max_length: int) -> bool:
    """A string CharField keeps as it is: non-blank, trimmed, ASCII without NUL, short."""
    return (
        type(value) is str
        and 0 < len(value) <= max_length
        and value.isascii()
        and "\x00" not in value
        and value.strip() == value
    )


def plain_check_data(raw: Any, amount_limit: int) -> dict[str, Any] | None:
    """What ``CheckSerializer`` would return for the common body (as
    :func:`plain_track_data`: else None, and the serializer decides)."""
    if not isinstance(raw, dict) or not _PLAIN_CHECK_KEYS.issuperset(raw):
        return None
    feature = raw.get("feature")
    required = raw.get("required", 1)
    breakdown = raw.get("breakdown", False)
    if not _plain_text(feature, MAX_FEATURE_KEY_LENGTH) or type(breakdown) is not bool:
        return None
    if type(required) is not int or not 0 <= required <= amount_limit:
        return None
    return {"feature": feature, "required": required, "breakdown": breakdown}


class NoBlankTypedParamsMixin:
    """Query strings: a blank parameter (``?to=``) is a 400 like any other bad value.

    DRF treats a blank form value of an optional field as absent, which the schema
    (``format: date-time``, ``type: integer``, ``minLength: 1``) does not say; found by
    fuzzing. Owner ids keep their documented "blank means none".
    """

    TYPED = (serializers.DateTimeField, serializers.IntegerField, serializers.BooleanField)

    def to_internal_value(self, data: Any) -> Any:
        fields: Any = self.fields  # type: ignore[attr-defined]
        blank = {
            name: "May not be blank."
            for name, field in fields.items()
            if data.get(name) == ""
            and (
                isinstance(field, self.TYPED)
                or (isinstance(field, serializers.CharField) and not field.allow_blank)
            )
        }
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)  # type: ignore[misc]


class UsageQuerySerializer(NoBlankTypedParamsMixin, OwnerSerializer):
    """Query string of ``GET billing/usage`` (``from`` is a Python keyword, hence the rename)."""

    feature = serializers.CharField(required=False, max_length=MAX_FEATURE_KEY_LENGTH)
    from_ = serializers.DateTimeField(
        required=False, help_text="ISO 8601; events at or after this time."
    )
    to = serializers.DateTimeField(required=False, help_text="ISO 8601; events before this time.")
    daily = serializers.BooleanField(
        required=False, default=False, help_text="Also return daily totals (UTC days)."
    )
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=500)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10**9)
    cursor = serializers.CharField(
        required=False,
        max_length=100,
        help_text="Opaque position from the `next` link (keyset page; replaces offset).",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields

    def validate_cursor(self, value: str) -> tuple[datetime, int, bool]:
        position = decode_cursor(value)
        if position is None:
            raise serializers.ValidationError("Not a cursor from a next link.")
        return position

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("from"), attrs.get("to")
        if start and end and start >= end:
            raise serializers.ValidationError({"to": "Must be later than from."})
        return attrs


def encode_cursor(at: datetime, event_id: int, *, newer: bool = False) -> str:
    """The keyset position just past an event (older events; ``newer``: newer ones)."""
    raw = f"{'p' if newer else 'n'}|{at.astimezone(UTC).isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, int, bool] | None:
    """``(at, event id, newer)`` of a cursor from :func:`encode_cursor`; None if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        direction, at_text, id_text = raw.split("|")
        at = datetime.fromisoformat(at_text)
        event_id = int(id_text)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    if direction not in ("n", "p") or at.tzinfo is None or not 0 < event_id < 2**63:
        return None
    return at, event_id, direction == "p"


class UsageEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    feature = serializers.CharField(source="feature.key")
    amount = serializers.IntegerField()
    balanceAfter = serializers.IntegerField(source="balance_after")
    usageAfter = serializers.IntegerField(source="usage_after")
    idempotencyKey = serializers.CharField(source="idempotency_key", allow_null=True)
    properties = serializers.DictField()
    createdAt = serializers.DateTimeField(source="created_at")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        if data["properties"] is None:  # the ledger keeps none as NULL
            data["properties"] = {}
        return dict(data)


class DailyUsageSerializer(serializers.Serializer):
    date = serializers.DateField(help_text="UTC day.")
    feature = serializers.CharField()
    amount = serializers.IntegerField(help_text="Sum of signed amounts that day.")
    events = serializers.IntegerField(help_text="Number of events that day.")


class UsagePageSerializer(serializers.Serializer):
    count = serializers.IntegerField(
        help_text="Events matching the filters, counted exactly up to 10,000 "
        "(then 10,000 and countCapped is true)."
    )
    countCapped = serializers.BooleanField(
        source="count_capped", help_text="More events match than count says."
    )
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = UsageEventSerializer(many=True)
    daily = DailyUsageSerializer(
        many=True, required=False, help_text="Only with daily=true: totals per UTC day."
    )


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. not_included.")
    message = serializers.CharField()
    fields = serializers.DictField(  # type: ignore[assignment]  # a field named "fields"
        help_text="Per-field details; empty when none."
    )


class ErrorSerializer(serializers.Serializer):
    """Every error: ``{"error": {"code", "message", "fields"}}``."""

    error = ErrorDetailSerializer()
