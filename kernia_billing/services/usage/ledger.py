"""The ledger row of an accepted track: one ``INSERT ... RETURNING id``, its signals, its result."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.db import connection, transaction
from django.db.models import Q, QuerySet, Value

from ... import signals
from ...models import BillingCustomer, UsageEvent
from ...models.usage import IdempotencyDigest
from ...types import TrackResult
from ..metering.outbox import record_overage
from .rollups import record_rollup, upsert_sql, utc_day

# The ledger row's columns as written by every insert (the archive copies the same ones);
# event_params adapts them in this order.
EVENT_COLUMNS = (
    "customer_id",
    "feature_id",
    "amount",
    "idempotency_key",
    "request_fingerprint",
    "properties",
    "created_at",
    "balance_after",
    "usage_after",
    "from_grants",
    "draws",
    "used_feature_id",
    "units",
)


@lru_cache(maxsize=2)
def insert_event_sql() -> str:
    """``INSERT`` of one ledger row (``EVENT_COLUMNS``, then ``RETURNING id``)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in EVENT_COLUMNS)
    placeholders = ", ".join(["%s"] * len(EVENT_COLUMNS))
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({columns}) "
        f"VALUES ({placeholders}) RETURNING {quote('id')}"
    )


@lru_cache(maxsize=4)
def _insert_event_sql(vendor: str, *, with_rollup: bool = False) -> str:
    insert = insert_event_sql()
    if not with_rollup:
        return insert
    # PostgreSQL: the ledger row and its rollup upsert in one statement (one round trip).
    quote = connection.ops.quote_name
    return f"WITH ev AS ({insert}), r AS ({upsert_sql(1)}) SELECT {quote('id')} FROM ev"


def event_params(event: UsageEvent, *, with_rollup: bool = False) -> list[Any]:
    """The parameters of :func:`insert_event_sql` (then of the rollup upsert, if asked).

    Adapted by hand, in ``EVENT_COLUMNS`` order, as the fields' ``get_db_prep_save``
    would (``draws`` and ``properties`` None are SQL NULL): that costs more than the
    insert on SQLite. The event takes what the ledger keeps (see :func:`stored_properties`,
    :func:`stored_fingerprint`), so it answers as its row reads.
    """
    ops = connection.ops
    event.request_fingerprint = stored_fingerprint(
        event.idempotency_key, bytes(event.request_fingerprint)
    )
    event.properties = stored_properties(event.properties)
    draws, properties = event.draws, event.properties
    params = [
        event.customer_id,
        event.feature_id,
        event.amount,
        event.idempotency_key,
        bytes(event.request_fingerprint),
        None if properties is None else ops.adapt_json_value(properties, None),
        ops.adapt_datetimefield_value(event.created_at),
        event.balance_after,
        event.usage_after,
        event.from_grants,
        None if draws is None else ops.adapt_json_value(draws, None),
        event.used_feature_id,
        event.units,
    ]
    if with_rollup:
        day = ops.adapt_datefield_value(utc_day(event.created_at))
        params += [event.customer_id, event.feature_id, day, event.amount, 1]
    return params


def keyed_events(pairs: Iterable[tuple[int, str]]) -> QuerySet[UsageEvent]:
    """The ledger rows of these ``(customer id, idempotency key)`` pairs.

    Found on the unique index's digest (see :class:`~kernia_billing.models.usage.
    IdempotencyDigest`; the only index that holds the key), rechecked on the real columns.
    """
    by_customer: dict[int, set[str]] = {}
    for customer_id, key in pairs:
        by_customer.setdefault(customer_id, set()).add(key)
    if not by_customer:
        return UsageEvent.objects.none()
    digests: list[Any] = [
        IdempotencyDigest(Value(customer_id), Value(key))
        for customer_id, keys in by_customer.items()
        for key in sorted(keys)
    ]
    # One IN list per customer: an OR per key would nest 1,000 deep, which SQLite
    # refuses ("Expression tree is too large") and PostgreSQL plans slowly.
    exact = Q()
    for customer_id, keys in by_customer.items():
        exact |= Q(customer_id=customer_id, idempotency_key__in=sorted(keys))
    return UsageEvent.objects.alias(key_digest=IdempotencyDigest()).filter(
        exact, key_digest__in=digests
    )


def stored_properties(properties: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the ledger keeps of a request's properties: None (a free NULL) for none."""
    return properties or None


def stored_fingerprint(idempotency_key: str | None, fingerprint: bytes) -> bytes:
    """What the ledger keeps of a request's fingerprint: nothing when it has no key."""
    return fingerprint if idempotency_key is not None else b""


def _record_event(event: UsageEvent, *, with_rollup: bool = False) -> UsageEvent:
    """``INSERT ... RETURNING id`` of the ledger row; the ORM's save() costs more here.

    ``with_rollup`` (PostgreSQL only) adds the row's :func:`.rollups.record_rollup` upsert
    to the same statement.
    """
    params = event_params(event, with_rollup=with_rollup)
    with connection.cursor() as cursor:
        cursor.execute(_insert_event_sql(connection.vendor, with_rollup=with_rollup), params)
        event.pk = cursor.fetchone()[0]
    return event


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
    if connection.vendor == "postgresql":
        _record_event(event, with_rollup=True)  # record_rollup, folded into the insert
    else:
        _record_event(event)
        record_rollup(event.customer_id, event.feature_id, event.created_at, event.amount)
    return after_recorded(event, feature=feature, unlimited=unlimited)


def after_recorded(event: UsageEvent, *, feature: str, unlimited: bool) -> UsageEvent:
    """What follows a ledger row's insert and rollup: its overage outbox row, its signals."""
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
