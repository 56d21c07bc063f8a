"""track's fast path: find the entitlement by owner and feature and deduct, in one UPDATE.

On PostgreSQL the ledger row, its day's rollup and its overage outbox row ride in the same
statement (data-modifying ``WITH``), so a track is one statement, its own transaction
outside a caller's (autocommit: no ``BEGIN``/``COMMIT`` round trips), and the
entitlement's row lock (taken by the ``UPDATE``) is held only for the end of that
statement and its commit: what bounds one hot customer's throughput. Elsewhere (SQLite):
the ``UPDATE``, then the ledger row, its rollup and its outbox row
(:func:`.ledger._record_tracked`).

Anything the fast path does not decide (first use, unknown or boolean features, refusals,
due resets, replays and conflicts, an explicit clock) it leaves to the full path in
:mod:`.track` with nothing written (but a lazy reset the full path asked it to run first,
in the same transaction, unless a used key rolled that back: see ``first``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import CharField
from django.utils import timezone

from ...models import BillingCustomer, Entitlement, Feature, FeatureKind, UsageEvent
from ...selectors import owner_ref
from ...types import TrackResult
from ..entitlements.resets import reset_and_deduct_params, reset_and_deduct_sql
from ..entitlements.rows import EntitlementRow
from ..metering.outbox import outbox_from_sql, send_on_commit_if_asked
from ..prepared import statement_cursor
from .ledger import EVENT_COLUMNS, _record_tracked, _track_result, after_recorded, event_params
from .rollups import upsert_from_sql, utc_day

#: The plan's grant alone decides: unlimited, covered by what is left of it, or overage
#: with no other grant to draw from first. Anything else takes the multi-grant draw.
PLAN_COVERS = (
    "unlimited OR {usage} - grant_usage + %s <= included OR (allow_overage AND grant_remaining = 0)"
)

#: The ledger row's columns the deduction decides (the rest are the request's).
#: ``balance_after`` as Entitlement.balance defines it, read under the row's lock.
_FROM_DEDUCTION = {
    "customer_id": "d.customer_id",
    "feature_id": "d.feature_id",
    "balance_after": 'd.included - (d."usage" - d.grant_usage) + d.grant_remaining',
    "usage_after": 'd."usage"',
}


def track_in_one_update(
    owner: Any,
    feature: str,
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: bytes,
    *,
    first: Callable[[], object] | None = None,
) -> TrackResult | None:
    """The common case: find-and-deduct and the ledger row (one statement on PostgreSQL).

    Returns None whenever the conditional UPDATE matches nothing or the key was
    used before, leaving the full path to say why (nothing was written then, but what
    ``first`` did in the same transaction is kept unless the key was used before).
    """
    owner_type_id, owner_id = owner_ref(owner)
    moment = timezone.now()
    event = _unrecorded(amount, idempotency_key, properties, fingerprint, moment)
    if connection.vendor == "postgresql" and first is None:
        deduction = _deduct_params(owner_type_id, owner_id, feature, amount, moment)
        unlimited = _in_one_statement(deduction, event, feature, idempotency_key)
        if unlimited is None:
            return None
        return _track_result(feature, unlimited, event, replayed=False)
    try:
        with transaction.atomic():
            if first is not None:
                first()
            if connection.vendor == "postgresql":
                deduction = _deduct_params(owner_type_id, owner_id, feature, amount, moment)
                recorded = _after_statement(_deduct_and_record(deduction, event), event, feature)
                if recorded is None:
                    return None
                unlimited = recorded
            else:
                row = _deduct_by_owner(owner_type_id, owner_id, feature, amount, moment)
                if row is None:
                    return None
                customer_id, feature_id, usage_after, balance_after, unlimited = row
                event.customer_id, event.feature_id = customer_id, feature_id
                event.usage_after, event.balance_after = usage_after, balance_after
                _record_tracked(event, feature=feature, unlimited=unlimited)
    except IntegrityError:
        if idempotency_key is None:
            raise
        return None  # a replay or a conflict: rolled back, answered by the full path
    return _track_result(feature, unlimited, event, replayed=False)


def _unrecorded(
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: bytes,
    moment: datetime,
) -> UsageEvent:
    """The ledger row of a track, as the request gives it (the deduction fills the rest)."""
    return UsageEvent(
        amount=amount,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        properties=properties,
        created_at=moment,
    )


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
        f"AND f.kind <> '{FeatureKind.BOOLEAN}' "
        f"AND (%s > 0 OR f.kind NOT IN ('{FeatureKind.METERED}', '{FeatureKind.CREDITS}'))"
    )
    return (
        f"UPDATE {entitlement} SET {usage} = {usage} + %s, updated_at = %s "
        f"WHERE id = ({lookup}) AND granted "
        "AND (period_start IS NULL OR period_start <= %s) "
        "AND (next_reset_at IS NULL OR next_reset_at > %s) "
        "AND (grant_next_expiry IS NULL OR grant_next_expiry > %s) "
        f"AND (CASE WHEN %s > 0 THEN ({PLAN_COVERS.format(usage=usage)}) "
        f"ELSE {usage} + %s >= 0 END) "
        f"RETURNING customer_id, feature_id, {usage}, included, unlimited, grant_usage, "
        "grant_remaining"
    )


def _deduct_params(
    owner_type_id: int, owner_id: str, feature: str, amount: int, moment: datetime
) -> list[Any]:
    at = connection.ops.adapt_datetimefield_value(moment)
    lookup = [owner_type_id, owner_id, feature, amount]
    return [amount, at, *lookup, at, at, at, amount, amount, amount]


def _deduct_by_owner(
    owner_type_id: int, owner_id: str, feature: str, amount: int, moment: datetime
) -> tuple[int, int, int, int, bool] | None:
    params = _deduct_params(owner_type_id, owner_id, feature, amount, moment)
    with statement_cursor() as cursor:
        cursor.execute(_deduct_by_owner_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    customer_id, feature_id, usage_after, included, unlimited, grant_usage, remaining = row
    balance_after = int(included) - (int(usage_after) - int(grant_usage)) + int(remaining)
    return int(customer_id), int(feature_id), int(usage_after), balance_after, bool(unlimited)


def resets_in_one_update(entitlement: EntitlementRow) -> bool:
    """Whether :func:`track_after_reset_in_one_update` decides the first track after a
    boundary of ``entitlement`` (PostgreSQL, no rollover: a rollover makes a grant)."""
    return connection.vendor == "postgresql" and not entitlement.rollover_max


def track_after_reset_in_one_update(
    entitlement: EntitlementRow,
    moment: datetime,
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: bytes,
) -> TrackResult | None:
    """PostgreSQL: the first track after a boundary as one statement: the lazy reset and
    the deduction in one ``UPDATE`` (``resets.reset_and_deduct_sql``), the ledger row, the
    rollup and the outbox row. None, with nothing written, where that does not decide it
    (a rollover, a refusal, another writer's reset first, a used key): :mod:`.track` goes
    on."""
    if not resets_in_one_update(entitlement):
        return None
    event = _unrecorded(amount, idempotency_key, properties, fingerprint, moment)
    deduction = reset_and_deduct_params(entitlement, amount, moment)
    feature = entitlement.feature
    unlimited = _in_one_statement(deduction, event, feature, idempotency_key, reset=True)
    if unlimited is None:
        return None
    return _track_result(feature, unlimited, event, replayed=False)


def _in_one_statement(
    deduction: list[Any],
    event: UsageEvent,
    feature: str,
    idempotency_key: str | None,
    *,
    reset: bool = False,
) -> bool | None:
    """PostgreSQL: :func:`_deduct_and_record` as the track's whole transaction.

    Everything the track writes (the deduction, the ledger row, its rollup, its overage
    outbox row) is that one statement, so outside a caller's transaction it runs as its
    own, in autocommit: no ``BEGIN`` and ``COMMIT`` round trips (the row's lock is held
    for the statement alone), and a used key's error needs no ``ROLLBACK``. Inside a
    caller's transaction, in a savepoint. Whether the entitlement is unlimited; None,
    with nothing written, if the deduction matched nothing or the key was used before.
    """
    own = connection.get_autocommit()
    try:
        with nullcontext() if own else transaction.atomic():
            decided = _deduct_and_record(deduction, event, reset=reset)
    except IntegrityError:
        if idempotency_key is None:
            raise
        return None  # a replay or a conflict: nothing written, answered by the full path
    return _after_statement(decided, event, feature)


def _after_statement(
    decided: tuple[bool, bool] | None, event: UsageEvent, feature: str
) -> bool | None:
    """What follows :func:`_deduct_and_record` (the outbox send's hook, then the signals,
    as ``record_overage`` orders them): whether the entitlement is unlimited, or None."""
    if decided is None:
        return None
    unlimited, reported = decided
    if reported:
        send_on_commit_if_asked()
    after_recorded(event, feature=feature, unlimited=unlimited, outbox=False)
    return unlimited


@lru_cache(maxsize=2)
def _deduct_and_record_sql(*, reset: bool = False) -> str:
    """PostgreSQL: the deduction, its ledger row, its rollup and its overage outbox row
    (if it has overage) in one ``WITH``.

    A deduction that matches nothing inserts nothing (no row in ``d``, so none in ``ev``
    or ``r``) and the statement returns no row. The rollup upsert reads the inserted row,
    so it comes after the ledger row (lock order step 4).
    """
    quote = connection.ops.quote_name
    values = []
    for name in EVENT_COLUMNS:
        if name in _FROM_DEDUCTION:
            values.append(_FROM_DEDUCTION[name])
        else:
            # Typed: a NULL or a string in a SELECT list is otherwise text. Strings as
            # text: a cast to varchar(n) would cut what the insert must refuse.
            field: Any = UsageEvent._meta.get_field(name)
            kind = "text" if isinstance(field, CharField) else field.db_type(connection)
            values.append(f"%s::{kind}")
    insert = (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} "
        f"({', '.join(quote(name) for name in EVENT_COLUMNS)}) "
        f"SELECT {', '.join(values)} FROM d "
        f"RETURNING {quote('id')}, customer_id, feature_id, amount, balance_after, created_at"
    )
    rollup = upsert_from_sql("SELECT customer_id, feature_id, %s::date, amount, 1 FROM ev")
    outbox, _ = outbox_from_sql("ev", timezone.now())  # the text; parameters per call
    deduction = reset_and_deduct_sql() if reset else _deduct_by_owner_sql("postgresql")
    return (
        f"WITH d AS ({deduction}), ev AS ({insert}), r AS ({rollup}), o AS ({outbox}) "
        f'SELECT ev.{quote("id")}, ev.customer_id, ev.feature_id, d."usage", ev.balance_after, '
        "d.unlimited, (SELECT count(*) FROM o) FROM ev CROSS JOIN d"
    )


def _deduct_and_record(
    deduction: list[Any], event: UsageEvent, *, reset: bool = False
) -> tuple[bool, bool] | None:
    """Deduct ``event.amount`` and insert ``event`` as its ledger row, with its rollup and
    its overage outbox row (if it has overage).

    ``deduction``: the parameters of the deduction (:func:`_deduct_params`, or with
    ``reset`` ``resets.reset_and_deduct_params``). Fills in what the deduction decided
    (customer, feature, usage and balance after, id) and returns whether the entitlement
    is unlimited and whether an outbox row was written; None if nothing matched.
    """
    params = list(deduction)
    ledger = event_params(event)  # also keeps on event what the ledger keeps
    params += [v for n, v in zip(EVENT_COLUMNS, ledger, strict=True) if n not in _FROM_DEDUCTION]
    params.append(connection.ops.adapt_datefield_value(utc_day(event.created_at)))
    params += outbox_from_sql("ev", event.created_at)[1]
    with statement_cursor() as cursor:
        cursor.execute(_deduct_and_record_sql(reset=reset), params)
        row = cursor.fetchone()
    if row is None:
        return None
    event.pk, event.customer_id, event.feature_id, usage_after, balance_after = row[:5]
    event.usage_after, event.balance_after = int(usage_after), int(balance_after)
    unlimited, reported = row[5:]
    return bool(unlimited), bool(reported)
