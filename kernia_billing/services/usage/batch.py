"""Batch track: many events in one transaction, each answered on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ...conf import billing_settings
from ...exceptions import (
    BillingError,
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NoPlan,
    NotIncluded,
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
from ...types import BatchItemResult, CheckResult, TrackRequest, TrackResult
from ..entitlements.resets import reset_if_due
from ..entitlements.rows import EntitlementRow, _select_many
from ..grants.draw import GrantLedger
from ..metering.outbox import record_overages
from .batch_fits import FittingBatch
from .batch_items import PoolDraw, PreparedEvent
from .check import _check_result, _load_or_explain, denial_error
from .ledger import (
    NewEvent,
    _track_result,
    insert_events,
    keyed_events_by_pair,
    stored_fingerprint,
    stored_properties,
)
from .pools import Pool, pool_of, track_in_units
from .track import _before_period
from .validation import (
    _fingerprint,
    _validate_amount,
    before_period_error,
    same_payload,
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

    A feature of a credit pool (``services.usage.pools``) is decided as single track
    decides it: its own entitlement first, if it has one; else (or when that does not
    cover the whole amount) ``amount x creditCost`` credits of the pool, answered in the
    feature's units. Both entitlements are locked with the others, in id order.
    """
    limit = billing_settings.MAX_BATCH_SIZE
    if len(events) > limit:
        raise InvalidRequest(
            f"A batch holds at most {limit} events.", fields={"events": f"At most {limit}."}
        )
    results: list[BatchItemResult | None] = [None] * len(events)
    prepared: list[PreparedEvent] = []
    lookups = _Lookups()
    shared: dict[tuple[int, str, int], PreparedEvent | BillingError] = {}
    for index, request in enumerate(events):
        try:
            prepared.append(_prepare_alike(index, request, owner, lookups, shared))
        except BillingError as error:
            results[index] = refusal(index, error)
    # The first try assumes that no key was used before (a retried batch is the rare
    # case) and skips looking them up: the ledger's unique index refuses a used key of an
    # accepted event with an IntegrityError, only the keys of events it refused are
    # looked up (_KeysUsedBefore), either rolls the try back and the next ones look all
    # the keys up (as single track's fast path leaves replays to its full path).
    # Decided as far as it can be before the lock (see batch_fits), for the first try.
    fitting = FittingBatch.of(prepared)
    for attempt in range(4):
        known_keys: set[tuple[int, str]] = set()
        try:
            with transaction.atomic():
                decided = _decide_locked(
                    prepared,
                    now,
                    known_keys,
                    look_up_keys=attempt > 0,
                    fitting=fitting if attempt == 0 else None,
                )
            break
        except _KeysUsedBefore:
            continue
        except IntegrityError:
            # Only an idempotency key used before (a replay, or a concurrent request
            # committing it first) is worth another try, which answers that event as a
            # replay; anything else is a real integrity error and goes up as one.
            if set(_existing_events(prepared)) == known_keys:
                raise
    else:  # pragma: no cover - needs three concurrent collisions in a row
        raise Contention("The batch kept colliding with concurrent requests; retry it.")
    for index, item in decided.answers().items():
        results[index] = item
    return [r for r in results if r is not None]


class _Lookups:
    """What the events of one batch looked up, each once: entitlements and pools."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Any, str], EntitlementRow | CheckResult] = {}
        self._pools: dict[str, Pool | None] = {}
        # owner_ref of each owner object, by identity: most events share one owner.
        self._refs: dict[int, tuple[Any, tuple[int, str]]] = {}

    def _owner_ref(self, owner: Any) -> tuple[int, str]:
        known = self._refs.get(id(owner))
        if known is None or known[0] is not owner:
            known = self._refs[id(owner)] = (owner, owner_ref(owner))
        return known[1]

    def row(self, owner: Any, feature: str) -> EntitlementRow | BillingError:
        key = (self._owner_ref(owner), feature)
        found = self._rows.get(key)
        if found is None:
            found = self._rows[key] = _load_or_explain(owner, feature)
        return denial_error(found) if isinstance(found, CheckResult) else found

    def pool(self, feature: str) -> Pool | None:
        if feature not in self._pools:
            self._pools[feature] = pool_of(feature)
        return self._pools[feature]


def _prepare_alike(
    index: int,
    request: TrackRequest,
    default_owner: Any,
    lookups: _Lookups,
    shared: dict[tuple[int, str, int], PreparedEvent | BillingError],
) -> PreparedEvent:
    """:func:`_prepare`, done once for the events without properties that share owner,
    feature and amount (most of a batch): each of those then validates only its key."""
    properties = request.properties
    if not (properties is None or (type(properties) is dict and not properties)):
        return _prepare(index, request, default_owner, lookups)
    if type(request.feature) is not str or type(request.amount) is not int:
        return _prepare(index, request, default_owner, lookups)  # (True is not 1)
    owner = request.owner if request.owner is not None else default_owner
    alike = (id(owner), request.feature, request.amount)
    found = shared.get(alike)
    if found is None:
        # In _prepare's order: the amount and the key are checked before the feature.
        _validate_amount(request.amount)
        key = validate_idempotency_key(request.idempotency_key)
        try:
            found = _prepare(index, request, default_owner, lookups)
        except BillingError as error:
            found = error  # the feature's or the owner's refusal: the same for each
        shared[alike] = found
    else:  # an amount already found valid
        key = validate_idempotency_key(request.idempotency_key)
    if isinstance(found, BillingError):
        raise found
    return found.for_event(index, key)


def _prepare(
    index: int,
    request: TrackRequest,
    default_owner: Any,
    lookups: _Lookups,
) -> PreparedEvent:
    """Validate one event and find its entitlement(s) (outside the transaction)."""
    owner = request.owner if request.owner is not None else default_owner
    amount = _validate_amount(request.amount)
    properties = validate_properties(request.properties)
    key = validate_idempotency_key(request.idempotency_key)
    validate_text(request.feature, "feature")
    found = lookups.row(owner, request.feature)
    # Only a feature that names a pool costs the lookup of it.
    may_pool = isinstance(found, BillingError) or found.credit_pool_id is not None
    pool = lookups.pool(request.feature) if amount > 0 and may_pool else None
    if isinstance(found, BillingError):
        # Single track: no entitlement of its own (or no plan) -> the pool, if any.
        if pool is None or not isinstance(found, (NotIncluded, NoPlan)):
            raise found
        own = None
    else:
        own = found
        _check_trackable(own, amount)
    pool_draw, pool_error = None, None
    customer_id = own.customer_id if own is not None else None
    if pool is not None:
        pool_row = lookups.row(owner, pool.pool)
        if isinstance(pool_row, BillingError):
            if own is None:
                raise pool_row  # single track raises the pool's error
            pool_error = pool_row
        else:
            _check_trackable(pool_row, amount * pool.cost)
            pool_draw = PoolDraw(pool_row.id, pool.feature_id, pool.cost)
            customer_id = pool_row.customer_id
    assert customer_id is not None  # an own entitlement or a pool's, else raised above
    return PreparedEvent(
        index=index,
        entitlement_id=None if own is None else own.id,
        feature_id=None if own is None else own.feature_id,
        customer_id=customer_id,
        feature=own.feature if own is not None else request.feature,
        amount=amount,
        idempotency_key=key,
        properties=properties,
        fingerprint=_fingerprint(
            own.feature if own is not None else request.feature, amount, properties
        ),
        pool=pool_draw,
        pool_error=pool_error,
    )


def _check_trackable(row: EntitlementRow, amount: int) -> None:
    if row.kind == FeatureKind.BOOLEAN:
        raise NotTrackable(fields={"feature": row.feature})
    if row.kind in CONSUMABLE_KINDS and amount < 0:
        raise InvalidRequest(
            "Metered usage only goes up: amount must be a positive integer.",
            fields={"amount": "Must be a positive integer."},
        )


def _decide_locked(
    prepared: list[PreparedEvent],
    now: datetime | None,
    known_keys: set[tuple[int, str]],
    *,
    look_up_keys: bool = True,
    fitting: FittingBatch | None = None,
) -> _Decided:
    """Inside one transaction: lock, decide every event in order, write once per row.

    The moment (``now``, else the time) is read once the rows are locked: a reset that
    committed while this batch waited for them started a period that the moment is in,
    not one after it. Events whose entitlement's period starts after the moment are
    refused, as single track refuses them: counted there, they would be usage of a
    period they were not recorded in. ``known_keys`` receives the idempotency keys
    that already had a ledger row; without ``look_up_keys`` none are looked up (the
    insert then fails on a used one), and a ``fitting`` batch that fits the locked rows
    is decided by it.
    """
    if not prepared:
        return _Decided({}, {}, [], [])
    ids = sorted({i for p in prepared for i in p.entitlement_ids})
    lock = " ORDER BY e.id"
    if connection.features.has_select_for_update_of:
        lock += " FOR UPDATE OF e"
    params: list[Any]
    if connection.vendor == "postgresql":  # one text whatever the count (prepared once)
        where, params = "e.id = ANY(%s::bigint[])", [ids]
    else:
        where, params = f"e.id IN ({', '.join(['%s'] * len(ids))})", ids
    if fitting is not None and not look_up_keys:
        in_one = fitting.in_one_statement(now or timezone.now())
        if in_one is not None:
            return _Decided({}, *in_one, [])
    rows = {r.id: r for r in _select_many(where + lock, params)}
    moment = now or timezone.now()
    for row_id, row in list(rows.items()):
        rows[row_id] = _reset_locked(row, moment)
    unlimited = {row_id: row.unlimited for row_id, row in rows.items()}
    before_period = {row_id for row_id, row in rows.items() if _before_period(row, moment)}
    if fitting is not None and not look_up_keys and fitting.fits(rows, before_period, moment):
        fitted_usage, fitted = fitting.decide(rows, moment)
        _write_decisions(rows, fitted_usage, fitted, moment, early=fitting.early)
        return _Decided({}, unlimited, fitted, [])
    # Step 3 of the lock order: the grants of these entitlements, ascending id.
    grants = GrantLedger.lock([rows[i] for i in ids if rows[i].grant_remaining > 0], moment)
    existing = _existing_events(prepared) if look_up_keys else {}
    known_keys.update(existing)
    decided: dict[int, BatchItemResult] = {}
    accepted: list[tuple[PreparedEvent, NewEvent]] = []
    in_batch_replays: list[tuple[PreparedEvent, NewEvent]] = []
    # Keys used earlier in this batch: (fingerprint, accepted event or None if refused).
    seen_keys: dict[tuple[int, str], tuple[bytes, NewEvent | None]] = {}
    usage = {row_id: row.usage for row_id, row in rows.items()}
    for item in prepared:
        if item.decided_on in before_period:
            decided[item.index] = refusal(item.index, before_period_error(now, moment))
            continue
        key = (item.customer_id, item.idempotency_key) if item.idempotency_key else None
        if key is not None:
            first = existing.get(key) if existing else None
            if first is not None:
                decided[item.index] = _replayed(item, unlimited, first)
                continue
            seen = seen_keys.get(key)
            if seen is not None and seen[0] != item.fingerprint:
                decided[item.index] = refusal(item.index, IdempotencyConflict())
                continue
            if seen is not None and seen[1] is not None:  # answered once it has its id
                in_batch_replays.append((item, seen[1]))
                continue
        # A first use, or a retry of a use that this batch refused: decide it.
        outcome = _decide_item(item, rows, before_period, usage, grants, moment, now)
        if isinstance(outcome, BillingError):
            decided[item.index] = refusal(item.index, outcome)
        else:
            accepted.append((item, outcome))  # answered once its ledger row has its id
        if key is not None:
            accepted_event = None if isinstance(outcome, BillingError) else outcome
            seen_keys[key] = (item.fingerprint, accepted_event)
    if not look_up_keys:
        # Only the inserts check the keys of the events accepted; a refused event whose
        # key was used before is a replay (or a conflict), answered by the full path.
        unchecked = seen_keys.keys() - {(i.customer_id, i.idempotency_key) for i, _ in accepted}
        if unchecked and keyed_events_by_pair(unchecked):
            raise _KeysUsedBefore
    _write_decisions(rows, usage, accepted, moment)
    grants.write(moment)
    return _Decided(decided, unlimited, accepted, in_batch_replays)


@dataclass(slots=True)
class _Decided:
    """What a try decided; the answers of accepted events are built after COMMIT (the
    entitlement rows stay locked until then: on a hot customer, other batches wait)."""

    answered: dict[int, BatchItemResult]  # refusals and replays of earlier rows
    unlimited: dict[int, bool]  # of each entitlement decided against
    accepted: list[tuple[PreparedEvent, NewEvent]]  # their ledger rows have their ids
    in_batch_replays: list[tuple[PreparedEvent, NewEvent]]  # of an accepted event

    def answers(self) -> dict[int, BatchItemResult]:
        answered = self.answered
        for item, event in self.accepted:
            result = _result(item, self.unlimited, event, replayed=False)
            answered[item.index] = BatchItemResult(item.index, True, result, status=201)
        for item, event in self.in_batch_replays:
            answered[item.index] = _replayed(item, self.unlimited, event)
        return answered


class _KeysUsedBefore(Exception):
    """A try that did not look the keys up refused an event whose key has a ledger row."""


def _decide_item(
    item: PreparedEvent,
    rows: dict[int, EntitlementRow],
    before_period: set[int],
    usage: dict[int, int],
    grants: GrantLedger,
    moment: datetime,
    now: datetime | None,
) -> NewEvent | BillingError:
    """The event's own entitlement first, then its credit pool, as single track does."""
    if item.entitlement_id is not None:  # not before its period: refused earlier
        outcome = _decide_one(item, rows[item.entitlement_id], item.amount, usage, grants, moment)
        if not isinstance(outcome, (InsufficientBalance, NotIncluded, NoPlan)):
            return outcome
        if item.pool is None:
            return item.pool_error or outcome
    assert item.pool is not None  # no own entitlement: _prepare found the pool's
    pool = item.pool
    if pool.entitlement_id in before_period:
        return before_period_error(now, moment)
    return _decide_one(
        item,
        rows[pool.entitlement_id],
        item.amount * pool.cost,
        usage,
        grants,
        moment,
        credit_use=(pool.feature_id, item.amount),
    )


def _reset_locked(row: EntitlementRow, moment: datetime) -> EntitlementRow:
    """Apply a due reset to a row this transaction holds locked."""
    if not row.reset_due(moment):
        return row
    return reset_if_due(row, moment)


def _existing_events(prepared: list[PreparedEvent]) -> dict[tuple[int, str], UsageEvent]:
    keyed = [(p.customer_id, p.idempotency_key) for p in prepared if p.idempotency_key]
    return keyed_events_by_pair(keyed)


def _decide_one(
    item: PreparedEvent,
    row: EntitlementRow,
    amount: int,
    usage: dict[int, int],
    grants: GrantLedger,
    moment: datetime,
    *,
    credit_use: tuple[int, int] | None = None,
) -> NewEvent | BillingError:
    """``amount`` against the locked ``row``: the ledger row to insert, or the refusal."""
    current = usage[row.id]
    after = current + amount
    if not row.granted:
        return denial_error(_check_result(row, 1))
    drawn = grants.draw(row, current, amount) if amount > 0 else (0, None)
    if drawn is None:
        balance = grants.balance(row, current)
        return InsufficientBalance(
            f"Balance {balance} is less than {amount}.",
            balance=balance,
            fields={"amount": amount, "balance": balance},
        )
    if after < 0:
        return UsageBelowZero(
            f"Usage is {current}; removing {-amount} would go below zero.",
            fields={"amount": amount, "usage": current},
        )
    usage[row.id] = after
    from_grants, draws = drawn
    return NewEvent(
        customer_id=item.customer_id,
        feature_id=row.feature_id,
        amount=amount,
        idempotency_key=item.idempotency_key,
        request_fingerprint=stored_fingerprint(item.idempotency_key, item.fingerprint),
        properties=stored_properties(item.properties),
        created_at=moment,
        balance_after=grants.balance(row, after),
        usage_after=after,
        from_grants=from_grants,
        draws=draws,
        used_feature_id=credit_use[0] if credit_use else None,
        units=credit_use[1] if credit_use else None,
    )


def _write_decisions(
    rows: dict[int, EntitlementRow],
    usage: dict[int, int],
    accepted: list[tuple[PreparedEvent, NewEvent]],
    moment: datetime,
    *,
    early: list[list[Any]] | None = None,
) -> None:
    changed = {row_id for row_id, value in usage.items() if value != rows[row_id].usage}
    for row_id in sorted(changed):
        # Absolute values are safe: this transaction holds the row locked.
        Entitlement.objects.filter(pk=row_id).update(usage=usage[row_id], updated_at=moment)
    if accepted:
        events = [event for _, event in accepted]
        insert_events(events, early=early)  # with their rollups, in the same transaction
        record_overages(events)  # metering: overage outbox rows


def _replayed(
    item: PreparedEvent, unlimited: dict[int, bool], event: UsageEvent | NewEvent
) -> BatchItemResult:
    if not same_payload(event.request_fingerprint, item.fingerprint):
        return refusal(
            item.index, IdempotencyConflict(fields={"idempotencyKey": event.idempotency_key})
        )
    return BatchItemResult(
        index=item.index, ok=True, result=_result(item, unlimited, event, replayed=True), status=201
    )


def _result(
    item: PreparedEvent,
    unlimited: dict[int, bool],
    event: UsageEvent | NewEvent,
    *,
    replayed: bool,
) -> TrackResult:
    """The track result of ``event``; a pool's ledger row is told in the feature's units."""
    if event.used_feature_id is None or not event.units:
        return _track_result(item.feature, unlimited[item.decided_on], event, replayed=replayed)
    pool_unlimited = item.pool is not None and unlimited[item.pool.entitlement_id]
    result = _track_result(item.feature, pool_unlimited, event, replayed=replayed)
    # The cost the row was drawn at (the feature's cost may have changed since).
    cost = event.amount // event.units
    return track_in_units(result, Pool(event.used_feature_id, "", cost), item.feature, event.units)


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
