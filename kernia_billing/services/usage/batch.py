"""Batch track: many events in one transaction, each answered on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ...conf import billing_settings
from ...exceptions import (
    BillingError,
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NotTrackable,
    UsageBelowZero,
)
from ...hygiene import validate_properties, validate_text
from ...models import (
    CONSUMABLE_KINDS,
    Entitlement,
    FeatureKind,
    UsageEvent,
)
from ...selectors import owner_ref
from ...types import BatchItemResult, CheckResult, TrackRequest
from ..entitlements.resets import reset_if_due
from ..entitlements.rows import EntitlementRow, _select_many
from ..grants.draw import GrantLedger
from ..metering.outbox import record_overages
from .check import _check_result, _load_or_explain, denial_error
from .ledger import _track_result
from .rollups import record_rollups
from .track import _before_period
from .validation import (
    _fingerprint,
    _validate_amount,
    validate_idempotency_key,
)

# --- batch track -------------------------------------------------------------------------


def track_batch(
    owner: Any,
    events: list[TrackRequest],
    *,
    now: datetime | None = None,
) -> list[BatchItemResult]:
    """Track many events at once; each is answered on its own, as :func:`track` would.

    Each event is exact and idempotent as in single track, but the whole batch
    costs a handful of statements: the entitlement rows involved are locked in
    id order (``SELECT ... FOR UPDATE``; SQLite serializes writers anyway), every
    event is decided in order against the locked balances, then one ``UPDATE``
    per entitlement and one bulk ``INSERT`` record what was accepted. An event's
    ``owner`` (staff callers) overrides ``owner``.
    """
    limit = billing_settings.MAX_BATCH_SIZE
    if len(events) > limit:
        raise InvalidRequest(
            f"A batch holds at most {limit} events.", fields={"events": f"At most {limit}."}
        )
    results: list[BatchItemResult | None] = [None] * len(events)
    prepared: list[_Prepared] = []
    rows_by_key: dict[tuple[Any, str], EntitlementRow] = {}
    for index, request in enumerate(events):
        try:
            prepared.append(_prepare(index, request, owner, rows_by_key))
        except BillingError as error:
            results[index] = refusal(index, error)
    for _attempt in range(3):
        known_keys: set[tuple[int, str]] = set()
        try:
            with transaction.atomic():
                decided = _decide_locked(prepared, now, known_keys)
            break
        except IntegrityError:
            # Only a concurrent request committing one of our idempotency keys is worth
            # another try (which then answers that event as a replay); anything else
            # is a real integrity error and goes up as one.
            if set(_existing_events(prepared)) == known_keys:
                raise
    else:  # pragma: no cover - needs three concurrent collisions in a row
        raise Contention("The batch kept colliding with concurrent requests; retry it.")
    for index, item in decided.items():
        results[index] = item
    return [r for r in results if r is not None]


@dataclass(slots=True)
class _Prepared:
    index: int
    entitlement_id: int
    customer_id: int
    feature: str
    amount: int
    idempotency_key: str | None
    properties: dict[str, Any]
    fingerprint: bytes


def _prepare(
    index: int,
    request: TrackRequest,
    default_owner: Any,
    rows_by_key: dict[tuple[Any, str], EntitlementRow],
) -> _Prepared:
    """Validate one event and find its entitlement (outside the transaction)."""
    owner = request.owner if request.owner is not None else default_owner
    amount = _validate_amount(request.amount)
    properties = validate_properties(request.properties)
    key = validate_idempotency_key(request.idempotency_key)
    validate_text(request.feature, "feature")
    cache_key = (owner_ref(owner), request.feature)
    row = rows_by_key.get(cache_key)
    if row is None:
        found = _load_or_explain(owner, request.feature)
        if isinstance(found, CheckResult):
            raise denial_error(found)
        row = rows_by_key[cache_key] = found
    if row.kind == FeatureKind.BOOLEAN:
        raise NotTrackable(fields={"feature": request.feature})
    if row.kind in CONSUMABLE_KINDS and amount < 0:
        raise InvalidRequest(
            "Metered usage only goes up: amount must be a positive integer.",
            fields={"amount": "Must be a positive integer."},
        )
    return _Prepared(
        index=index,
        entitlement_id=row.id,
        customer_id=row.customer_id,
        feature=row.feature,
        amount=amount,
        idempotency_key=key,
        properties=properties,
        fingerprint=_fingerprint(row.feature, amount, properties),
    )


def _decide_locked(
    prepared: list[_Prepared], now: datetime | None, known_keys: set[tuple[int, str]]
) -> dict[int, BatchItemResult]:
    """Inside one transaction: lock, decide every event in order, write once per row.

    The moment (``now``, else the time) is read once the rows are locked: a reset that
    committed while this batch waited for them started a period that the moment is in,
    not one after it. Events whose entitlement's period starts after the moment are
    refused, as single track refuses them: counted there, they would be usage of a
    period they were not recorded in. ``known_keys`` receives the idempotency keys
    that already had a ledger row.
    """
    if not prepared:
        return {}
    ids = sorted({p.entitlement_id for p in prepared})
    lock = " ORDER BY e.id"
    if connection.features.has_select_for_update_of:
        lock += " FOR UPDATE OF e"
    placeholders = ", ".join(["%s"] * len(ids))
    rows = {r.id: r for r in _select_many(f"e.id IN ({placeholders}){lock}", ids)}
    moment = now or timezone.now()
    for row_id, row in list(rows.items()):
        rows[row_id] = _reset_locked(row, moment)
    before_period = {row_id for row_id, row in rows.items() if _before_period(row, moment)}
    # Step 3 of the lock order: the grants of these entitlements, ascending id.
    grants = GrantLedger.lock([rows[i] for i in ids if rows[i].grant_remaining > 0], moment)
    existing = _existing_events(prepared)
    known_keys.update(existing)
    decided: dict[int, BatchItemResult] = {}
    accepted: list[tuple[_Prepared, UsageEvent]] = []
    in_batch_replays: list[tuple[_Prepared, UsageEvent]] = []
    # Keys used earlier in this batch: (fingerprint, accepted event or None if refused).
    seen_keys: dict[tuple[int, str], tuple[bytes, UsageEvent | None]] = {}
    usage = {row_id: row.usage for row_id, row in rows.items()}
    for item in prepared:
        row = rows[item.entitlement_id]
        if row.id in before_period:
            decided[item.index] = refusal(item.index, _before_period_error(now, moment))
            continue
        key = (item.customer_id, item.idempotency_key) if item.idempotency_key else None
        if key is not None:
            first = existing.get(key)
            if first is not None:
                decided[item.index] = _replayed(item, row, first)
                continue
            fingerprint, event = seen_keys.get(key, (item.fingerprint, None))
            if fingerprint != item.fingerprint:
                decided[item.index] = refusal(item.index, IdempotencyConflict())
                continue
            if event is not None:  # answered once the event has its id, below
                in_batch_replays.append((item, event))
                continue
        # A first use, or a retry of a use that this batch refused: decide it.
        result = _decide_one(item, row, usage, grants, moment, accepted)
        decided[item.index] = result
        if key is not None:
            seen_keys[key] = (item.fingerprint, accepted[-1][1] if result.ok else None)
    _write_decisions(rows, usage, accepted, moment)
    grants.write(moment)
    for item, event in accepted:
        decided[item.index] = BatchItemResult(
            index=item.index,
            ok=True,
            result=_track_result(
                item.feature, rows[item.entitlement_id].unlimited, event, replayed=False
            ),
            status=201,
        )
    for item, event in in_batch_replays:
        decided[item.index] = _replayed(item, rows[item.entitlement_id], event)
    return decided


def _before_period_error(now: datetime | None, moment: datetime) -> BillingError:
    """What single track answers for a moment before the current period."""
    if now is not None:
        return InvalidRequest(
            "Usage cannot be recorded before the current period started.",
            fields={"now": moment.isoformat()},
        )
    # The period starts after the server's clock (Stripe's clock is ahead): retry later.
    return Contention("The current period has not started yet; retry the event.")


def _reset_locked(row: EntitlementRow, moment: datetime) -> EntitlementRow:
    """Apply a due reset to a row this transaction holds locked."""
    if row.next_reset_at is None or moment < row.next_reset_at:
        return row
    return reset_if_due(row, moment)


def _existing_events(prepared: list[_Prepared]) -> dict[tuple[int, str], UsageEvent]:
    keyed = [(p.customer_id, p.idempotency_key) for p in prepared if p.idempotency_key]
    if not keyed:
        return {}
    # One IN list per customer: an OR per key would nest 1,000 deep, which SQLite
    # refuses ("Expression tree is too large") and PostgreSQL plans slowly.
    keys_by_customer: dict[int, set[str]] = {}
    for customer_id, key in keyed:
        keys_by_customer.setdefault(customer_id, set()).add(key)
    query = Q()
    for customer_id, keys in keys_by_customer.items():
        query |= Q(customer_id=customer_id, idempotency_key__in=sorted(keys))
    return {
        (event.customer_id, event.idempotency_key or ""): event
        for event in UsageEvent.objects.filter(query)
    }


def _decide_one(
    item: _Prepared,
    row: EntitlementRow,
    usage: dict[int, int],
    grants: GrantLedger,
    moment: datetime,
    accepted: list[tuple[_Prepared, UsageEvent]],
) -> BatchItemResult:
    current = usage[row.id]
    after = current + item.amount
    if not row.granted:
        return refusal(item.index, denial_error(_check_result(row, 1)))
    drawn = grants.draw(row, current, item.amount) if item.amount > 0 else (0, None)
    if drawn is None:
        balance = grants.balance(row, current)
        return refusal(
            item.index,
            InsufficientBalance(
                f"Balance {balance} is less than {item.amount}.",
                balance=balance,
                fields={"amount": item.amount, "balance": balance},
            ),
        )
    if after < 0:
        return refusal(
            item.index,
            UsageBelowZero(
                f"Usage is {current}; removing {-item.amount} would go below zero.",
                fields={"amount": item.amount, "usage": current},
            ),
        )
    usage[row.id] = after
    from_grants, draws = drawn
    event = UsageEvent(
        customer_id=item.customer_id,
        feature_id=row.feature_id,
        amount=item.amount,
        idempotency_key=item.idempotency_key,
        request_fingerprint=item.fingerprint,
        properties=item.properties,
        created_at=moment,
        balance_after=grants.balance(row, after),
        usage_after=after,
        from_grants=from_grants,
        draws=draws,
    )
    accepted.append((item, event))
    return BatchItemResult(index=item.index, ok=True, status=201)


def _write_decisions(
    rows: dict[int, EntitlementRow],
    usage: dict[int, int],
    accepted: list[tuple[_Prepared, UsageEvent]],
    moment: datetime,
) -> None:
    changed = {row_id for row_id, value in usage.items() if value != rows[row_id].usage}
    for row_id in sorted(changed):
        # Absolute values are safe: this transaction holds the row locked.
        Entitlement.objects.filter(pk=row_id).update(usage=usage[row_id], updated_at=moment)
    if accepted:
        UsageEvent.objects.bulk_create([event for _, event in accepted], batch_size=500)
        record_rollups(event for _, event in accepted)  # same transaction as the rows
        record_overages(event for _, event in accepted)  # metering: overage outbox rows


def _replayed(item: _Prepared, row: EntitlementRow, event: UsageEvent) -> BatchItemResult:
    if bytes(event.request_fingerprint) != item.fingerprint:
        return refusal(
            item.index, IdempotencyConflict(fields={"idempotencyKey": event.idempotency_key})
        )
    return BatchItemResult(
        index=item.index,
        ok=True,
        result=_track_result(row.feature, row.unlimited, event, replayed=True),
        status=201,
    )


def refusal(index: int, error: BillingError) -> BatchItemResult:
    """A batch event answered with ``error``, as single track would raise it."""
    return BatchItemResult(
        index=index,
        ok=False,
        error_code=error.code,
        error_message=error.message,
        error_fields=error.fields,
        status=error.status,
    )
