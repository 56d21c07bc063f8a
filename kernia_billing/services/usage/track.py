"""track: the one conditional UPDATE that deducts usage, and its ledger row."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ...exceptions import (
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
    BillingCustomer,
    Entitlement,
    FeatureKind,
    UsageEvent,
)
from ...types import CheckResult, TrackResult
from ..entitlements.resets import reset_if_due
from ..entitlements.rows import EntitlementRow, _reload
from ..grants.draw import draw
from ..grants.expiry import expire_due
from ..reservations.giveback import expire_due_holds
from .check import _check_result, _load_or_explain, denial_error
from .fast_track import (
    PLAN_COVERS,
    resets_in_one_update,
    track_after_reset_in_one_update,
    track_in_one_update,
)
from .ledger import _record_tracked, _track_result, keyed_events
from .pools import Pool, pool_of, track_in_units
from .validation import (
    _fingerprint,
    _validate_amount,
    before_period_error,
    same_payload,
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
    try:
        return _track(owner, feature, amount, idempotency_key, properties, fingerprint, now)
    except (InsufficientBalance, NotIncluded, NoPlan):
        pool = pool_of(feature) if amount > 0 else None
        if pool is None:
            raise
    # A credit pool covers what the feature's own entitlement does not (see .pools).
    result = _track(
        owner,
        pool.pool,
        amount * pool.cost,
        idempotency_key,
        properties,
        fingerprint,
        now,
        credit_use=(pool.feature_id, amount),
    )
    return track_in_units(result, pool, feature, amount)


def _track(
    owner: Any,
    feature: str,
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: bytes,
    now: datetime | None,
    *,
    credit_use: tuple[int, int] | None = None,
) -> TrackResult:
    one_statement = now is None and not isinstance(owner, BillingCustomer) and credit_use is None
    if one_statement:
        tracked = track_in_one_update(
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
    if kind in CONSUMABLE_KINDS and amount < 0:
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
        if one_statement and entitlement.reset_due(moment):
            # The first track after a boundary: the lazy reset and the deduction in one
            # statement where it can (PostgreSQL, no rollover), else the reset, then the
            # one statement in the new period, in one transaction (one commit to wait
            # for). What either leaves undecided (a refusal, another writer's reset, a
            # used key: nothing kept) is decided below.
            if resets_in_one_update(entitlement):
                tracked = track_after_reset_in_one_update(
                    entitlement, moment, amount, idempotency_key, properties, fingerprint
                )
            else:
                tracked = track_in_one_update(
                    owner,
                    feature,
                    amount,
                    idempotency_key,
                    properties,
                    fingerprint,
                    first=partial(reset_if_due, entitlement, moment),
                )
            if tracked is not None:
                return tracked
        entitlement = reset_if_due(entitlement, moment)
        nested = connection.in_atomic_block
        try:
            with transaction.atomic():
                from_grants, draws = 0, None
                row = _deduct(entitlement, amount, moment)
                if row is None and amount > 0:
                    # The plan's grant does not cover it: draw across the grants too.
                    outcome = draw(entitlement.id, amount, moment)
                    if outcome is not None:
                        row = (outcome.usage_after, outcome.balance_after)
                        from_grants, draws = outcome.from_grants, outcome.draws
                # Refused: nothing was written, so the block ends without an exception: a
                # ROLLBACK would drop the connection's prepared statements. Inside a
                # caller's transaction its savepoint is rolled back, which frees the rows
                # the draw locked (a credit pool may be tried next: the lock order).
                if row is None and nested:
                    transaction.set_rollback(True)
                if row is not None:
                    usage_after, balance_after = row
                    event = _record_tracked(
                        UsageEvent(
                            customer_id=entitlement.customer_id,
                            feature_id=entitlement.feature_id,
                            amount=amount,
                            idempotency_key=idempotency_key,
                            request_fingerprint=fingerprint,
                            properties=properties,
                            created_at=moment,
                            balance_after=balance_after,
                            usage_after=usage_after,
                            from_grants=from_grants,
                            draws=draws,
                            used_feature_id=credit_use[0] if credit_use else None,
                            units=credit_use[1] if credit_use else None,
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
        if row is None:
            entitlement, retry = after_refusal(entitlement.id, amount, moment)
            if retry:
                if fixed_now is not None and _before_period(entitlement, moment):
                    raise before_period_error(fixed_now, moment)
                continue
            if amount > 0:
                raise insufficient_balance(entitlement, amount)
            raise UsageBelowZero(
                f"Usage is {entitlement.usage}; removing {-amount} would go below zero.",
                fields={"amount": amount, "usage": entitlement.usage},
            )
        return _track_result(entitlement.feature, entitlement.unlimited, event, replayed=False)
    raise Contention()  # pragma: no cover - five period boundaries crossed in one call


class _Refused(Exception):
    """The conditional UPDATE matched no row."""


def after_refusal(
    entitlement_id: int, amount: int, moment: datetime
) -> tuple[EntitlementRow, bool]:
    """The entitlement after its conditional ``UPDATE`` refused ``amount`` (grant expiries
    that fell due applied), and whether to try again: a period boundary moved under us,
    or holds past their expiry were still in the balance and were given back. Raises the
    denial when the feature is no longer granted. Track and reserve share it."""
    row = _reload(entitlement_id)
    if row.expiry_due(moment):
        row = expire_due(row.id, moment)
    if not row.granted:
        raise denial_error(_check_result(row, 1)) from None
    if _needs_retry(row, moment):
        return row, True
    return row, amount > 0 and expire_due_holds(row.id, moment) > 0


def insufficient_balance(row: EntitlementRow, amount: int) -> InsufficientBalance:
    return InsufficientBalance(
        f"Balance {row.balance} is less than {amount}.",
        balance=row.balance,
        fields={"amount": amount, "balance": row.balance},
    )


def _needs_retry(entitlement: EntitlementRow, moment: datetime) -> bool:
    """Refused only because a period boundary moved under us: reset/refresh and retry."""
    if entitlement.reset_due(moment):
        return True
    return _before_period(entitlement, moment)


def _before_period(entitlement: EntitlementRow, moment: datetime) -> bool:
    return entitlement.period_start is not None and moment < entitlement.period_start


def _deduct(entitlement: EntitlementRow, amount: int, moment: datetime) -> tuple[int, int] | None:
    """``UPDATE ... SET usage = usage + amount WHERE <allowed> RETURNING ...``: (usage, balance).

    The database evaluates the limit under the row lock it takes for the update,
    so concurrent tracks can never overspend or lose an update.
    """
    quote = connection.ops.quote_name
    at = connection.ops.adapt_datetimefield_value(moment)
    usage = quote("usage")
    limit = f"({PLAN_COVERS.format(usage=usage)})" if amount > 0 else f"{usage} + %s >= 0"
    sql = (
        f"UPDATE {quote(Entitlement._meta.db_table)} "
        f"SET {usage} = {usage} + %s, {quote('updated_at')} = %s "
        f"WHERE {quote('id')} = %s AND {quote('granted')} "
        f"AND ({quote('period_start')} IS NULL OR {quote('period_start')} <= %s) "
        f"AND ({quote('next_reset_at')} IS NULL OR {quote('next_reset_at')} > %s) "
        "AND (grant_next_expiry IS NULL OR grant_next_expiry > %s) "
        f"AND {limit} "
        f"RETURNING {usage}, {quote('included')}, grant_usage, grant_remaining"
    )
    now_value = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [amount, now_value, entitlement.id, at, at, at, amount])
        row = cursor.fetchone()
    if row is None:
        return None
    usage_after, included, grant_usage, remaining = (int(v) for v in row)
    return usage_after, included - (usage_after - grant_usage) + remaining


def _replay(
    customer_id: int, key: str, fingerprint: bytes, entitlement: EntitlementRow
) -> TrackResult | None:
    event = keyed_events([(customer_id, key)]).first()
    if event is None:
        return None
    if not same_payload(event.request_fingerprint, fingerprint):
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    result = _track_result(entitlement.feature, entitlement.unlimited, event, replayed=True)
    if event.feature_id != entitlement.feature_id and event.units and result.balance is not None:
        # The first track drew from the credit pool (its own balance was spent): answer
        # in the feature's units, as the first answer was.
        pool = Pool(entitlement.feature_id, "", event.amount // event.units)
        return track_in_units(result, pool, entitlement.feature, event.units)
    return result
