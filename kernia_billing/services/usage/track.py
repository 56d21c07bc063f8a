"""track: the one conditional UPDATE that deducts usage, and its ledger row."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from ... import signals
from ...exceptions import (
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NotTrackable,
    UsageBelowZero,
)
from ...hygiene import validate_properties, validate_text
from ...models import (
    BillingCustomer,
    Entitlement,
    Feature,
    FeatureKind,
    UsageEvent,
)
from ...selectors import owner_ref
from ...types import CheckResult, TrackResult
from ..entitlements.resets import reset_if_due
from ..entitlements.rows import EntitlementRow, _reload
from ..metering.outbox import record_overage
from .check import _check_result, _load_or_explain, denial_error
from .validation import (
    _fingerprint,
    _validate_amount,
    validate_idempotency_key,
)

# --- track -------------------------------------------------------------------------------


def track(
    owner: Any,
    feature: str,
    amount: int = 1,
    *,
    idempotency_key: str | None = None,
    properties: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> TrackResult:
    """Record ``amount`` of usage of ``feature`` where the product action succeeded.

    Metered amounts are positive; seats and quantities take non-zero amounts and
    never go below zero. Without overage, a track that would take the balance
    below zero raises :class:`InsufficientBalance` and records nothing. A repeated
    ``idempotency_key`` with the same payload returns the first result with
    ``replayed=True``; with another payload it raises :class:`IdempotencyConflict`.
    """
    amount = _validate_amount(amount)
    properties = validate_properties(properties)
    idempotency_key = validate_idempotency_key(idempotency_key)
    validate_text(feature, "feature")
    fingerprint = _fingerprint(feature, amount, properties)
    if now is None and not isinstance(owner, BillingCustomer):
        tracked = _track_in_one_update(
            owner, feature, amount, idempotency_key, properties, fingerprint
        )
        if tracked is not None:
            return tracked
    # Everything the one-statement path does not decide: first use, unknown or
    # boolean features, refusals, due resets, replays, an explicit clock.
    found = _load_or_explain(owner, feature)
    if isinstance(found, CheckResult):
        raise denial_error(found)
    entitlement = found
    kind = entitlement.kind
    if kind == FeatureKind.BOOLEAN:
        raise NotTrackable(fields={"feature": feature})
    if kind == FeatureKind.METERED and amount < 0:
        raise InvalidRequest(
            "Metered usage only goes up: amount must be a positive integer.",
            fields={"amount": "Must be a positive integer."},
        )
    if not entitlement.granted:
        raise denial_error(_check_result(entitlement, 1))

    if idempotency_key is not None:
        replay = _replay(entitlement.customer_id, idempotency_key, fingerprint, entitlement)
        if replay is not None:
            return replay

    fixed_now = now
    for _attempt in range(5):
        moment = fixed_now or timezone.now()
        entitlement = reset_if_due(entitlement, moment)
        try:
            with transaction.atomic():
                row = _deduct(entitlement, amount, moment)
                if row is None:
                    raise _Refused
                usage_after, included = row
                event = _record_tracked(
                    UsageEvent(
                        customer_id=entitlement.customer_id,
                        feature_id=entitlement.feature_id,
                        amount=amount,
                        idempotency_key=idempotency_key,
                        request_fingerprint=fingerprint,
                        properties=properties,
                        created_at=moment,
                        balance_after=included - usage_after,
                        usage_after=usage_after,
                    ),
                    feature=entitlement.feature,
                    unlimited=entitlement.unlimited,
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent request with the same key committed first.
            replay = _replay(entitlement.customer_id, idempotency_key, fingerprint, entitlement)
            if replay is None:
                raise
            return replay
        except _Refused:
            entitlement = _reload(entitlement.id)
            if not entitlement.granted:
                raise denial_error(_check_result(entitlement, 1)) from None
            if _needs_retry(entitlement, moment):
                if fixed_now is not None and _before_period(entitlement, moment):
                    raise InvalidRequest(
                        "Usage cannot be recorded before the current period started.",
                        fields={"now": moment.isoformat()},
                    ) from None
                continue
            if amount > 0:
                raise InsufficientBalance(
                    f"Balance {entitlement.balance} is less than {amount}.",
                    balance=entitlement.balance,
                    fields={"amount": amount, "balance": entitlement.balance},
                ) from None
            raise UsageBelowZero(
                f"Usage is {entitlement.usage}; removing {-amount} would go below zero.",
                fields={"amount": amount, "usage": entitlement.usage},
            ) from None
        return _track_result(entitlement.feature, entitlement.unlimited, event, replayed=False)
    raise Contention()  # pragma: no cover - five period boundaries crossed in one call


def _track_in_one_update(
    owner: Any,
    feature: str,
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: str,
) -> TrackResult | None:
    """The common case in two statements: find-and-deduct, then the ledger row.

    Returns None whenever the conditional UPDATE matches nothing or the key was
    used before, leaving the full path to say why (nothing was written then).
    """
    owner_type_id, owner_id = owner_ref(owner)
    moment = timezone.now()
    try:
        with transaction.atomic():
            row = _deduct_by_owner(owner_type_id, owner_id, feature, amount, moment)
            if row is None:
                return None
            customer_id, feature_id, usage_after, included, unlimited = row
            event = _record_tracked(
                UsageEvent(
                    customer_id=customer_id,
                    feature_id=feature_id,
                    amount=amount,
                    idempotency_key=idempotency_key,
                    request_fingerprint=fingerprint,
                    properties=properties,
                    created_at=moment,
                    balance_after=included - usage_after,
                    usage_after=usage_after,
                ),
                feature=feature,
                unlimited=unlimited,
            )
    except IntegrityError:
        if idempotency_key is None:
            raise
        return None  # a replay or a conflict: rolled back, answered by the full path
    return _track_result(feature, unlimited, event, replayed=False)


@lru_cache(maxsize=2)
def _deduct_by_owner_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    entitlement = quote(Entitlement._meta.db_table)
    usage = quote("usage")
    lookup = (
        f"SELECT e.id FROM {entitlement} e "
        f"JOIN {quote(BillingCustomer._meta.db_table)} c ON c.id = e.customer_id "
        f"JOIN {quote(Feature._meta.db_table)} f ON f.id = e.feature_id "
        "WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s "
        f"AND f.kind <> '{FeatureKind.BOOLEAN}' AND (%s > 0 OR f.kind <> '{FeatureKind.METERED}')"
    )
    return (
        f"UPDATE {entitlement} SET {usage} = {usage} + %s, updated_at = %s "
        f"WHERE id = ({lookup}) AND granted "
        "AND (period_start IS NULL OR period_start <= %s) "
        "AND (next_reset_at IS NULL OR next_reset_at > %s) "
        f"AND (CASE WHEN %s > 0 THEN (unlimited OR allow_overage OR {usage} + %s <= included) "
        f"ELSE {usage} + %s >= 0 END) "
        f"RETURNING customer_id, feature_id, {usage}, included, unlimited"
    )


def _deduct_by_owner(
    owner_type_id: int, owner_id: str, feature: str, amount: int, moment: datetime
) -> tuple[int, int, int, int, bool] | None:
    at = connection.ops.adapt_datetimefield_value(moment)
    params = [amount, at, owner_type_id, owner_id, feature, amount, at, at]
    params += [amount, amount, amount]
    with connection.cursor() as cursor:
        cursor.execute(_deduct_by_owner_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    customer_id, feature_id, usage_after, included, unlimited = row
    return int(customer_id), int(feature_id), int(usage_after), int(included), bool(unlimited)


class _Refused(Exception):
    """The conditional UPDATE matched no row."""


def _needs_retry(entitlement: EntitlementRow, moment: datetime) -> bool:
    """Refused only because a period boundary moved under us: reset/refresh and retry."""
    if entitlement.next_reset_at is not None and moment >= entitlement.next_reset_at:
        return True
    return _before_period(entitlement, moment)


def _before_period(entitlement: EntitlementRow, moment: datetime) -> bool:
    return entitlement.period_start is not None and moment < entitlement.period_start


def _deduct(entitlement: EntitlementRow, amount: int, moment: datetime) -> tuple[int, int] | None:
    """``UPDATE ... SET usage = usage + amount WHERE <allowed> RETURNING usage, included``.

    The database evaluates the limit under the row lock it takes for the update,
    so concurrent tracks can never overspend or lose an update.
    """
    quote = connection.ops.quote_name
    at = connection.ops.adapt_datetimefield_value(moment)
    usage = quote("usage")
    if amount > 0:
        limit = f"({quote('unlimited')} OR {quote('allow_overage')} OR {usage} + %s <= "
        limit += f"{quote('included')})"
    else:
        limit = f"{usage} + %s >= 0"
    sql = (
        f"UPDATE {quote(Entitlement._meta.db_table)} "
        f"SET {usage} = {usage} + %s, {quote('updated_at')} = %s "
        f"WHERE {quote('id')} = %s AND {quote('granted')} "
        f"AND ({quote('period_start')} IS NULL OR {quote('period_start')} <= %s) "
        f"AND ({quote('next_reset_at')} IS NULL OR {quote('next_reset_at')} > %s) "
        f"AND {limit} "
        f"RETURNING {usage}, {quote('included')}"
    )
    now_value = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [amount, now_value, entitlement.id, at, at, amount])
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else None


_EVENT_COLUMNS = (
    "customer_id",
    "feature_id",
    "amount",
    "idempotency_key",
    "request_fingerprint",
    "properties",
    "created_at",
    "balance_after",
    "usage_after",
)


@lru_cache(maxsize=2)
def _insert_event_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _EVENT_COLUMNS)
    placeholders = ", ".join(["%s"] * len(_EVENT_COLUMNS))
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({columns}) "
        f"VALUES ({placeholders}) RETURNING {quote('id')}"
    )


@lru_cache(maxsize=1)
def _event_fields() -> tuple[models.Field[Any, Any], ...]:
    fields = (UsageEvent._meta.get_field(name) for name in _EVENT_COLUMNS)
    return tuple(field for field in fields if isinstance(field, models.Field))


def _record_event(event: UsageEvent) -> UsageEvent:
    """``INSERT ... RETURNING id`` of the ledger row; the ORM's save() costs more here."""
    params = [
        field.get_db_prep_save(getattr(event, field.attname), connection)
        for field in _event_fields()
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_event_sql(connection.vendor), params)
        event.pk = cursor.fetchone()[0]
    return event


def _replay(
    customer_id: int, key: str, fingerprint: str, entitlement: EntitlementRow
) -> TrackResult | None:
    event = UsageEvent.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if event is None:
        return None
    if event.request_fingerprint != fingerprint:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    return _track_result(entitlement.feature, entitlement.unlimited, event, replayed=True)


def _track_result(
    feature: str, unlimited: bool, event: UsageEvent, *, replayed: bool
) -> TrackResult:
    return TrackResult(
        event_id=event.pk,
        feature=feature,
        amount=event.amount,
        balance=event.balance_after,
        usage=event.usage_after,
        included=event.balance_after + event.usage_after,
        unlimited=unlimited,
        replayed=replayed,
        created_at=event.created_at,
    )


def _record_tracked(event: UsageEvent, *, feature: str, unlimited: bool) -> UsageEvent:
    """Insert the ledger row of an accepted deduction and queue its signals."""
    _record_event(event)
    record_overage(event)  # metering: the outbox row of its overage, if any
    _notify_tracked(event.customer_id, feature, unlimited, event)
    return event


def _notify_tracked(customer_id: int, feature: str, unlimited: bool, event: UsageEvent) -> None:
    balance_before = event.balance_after + event.amount
    limit_reached = not unlimited and balance_before > 0 >= event.balance_after
    if not (signals.usage_tracked.has_listeners() or signals.limit_reached.has_listeners()):
        return  # the hot path pays nothing for signals nobody listens to

    def send() -> None:
        customer = BillingCustomer.objects.get(pk=customer_id)
        signals.usage_tracked.send(
            sender=UsageEvent,
            customer=customer,
            feature=feature,
            event_id=event.pk,
            amount=event.amount,
            balance=event.balance_after,
            usage=event.usage_after,
        )
        if limit_reached:
            signals.limit_reached.send(
                sender=UsageEvent,
                customer=customer,
                feature=feature,
                balance=event.balance_after,
            )

    transaction.on_commit(send)
