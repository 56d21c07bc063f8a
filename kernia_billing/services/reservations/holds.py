"""Reserve: take balance now as a track deducts, write a reservation instead of a ledger
row (the semantics: :mod:`kernia_billing.services.reservations`).

The common reserve is one conditional ``UPDATE`` of the plan's grant and the row's
insert; everything else (first use, refusals, grants to draw from, overage or
unlimited, due resets or expiries, a fixed clock) takes the full path, which also
answers replays of an idempotency key.

Lock order: the package's (:mod:`kernia_billing.services.reservations`); a reserve
takes the entitlement, then grants ascending id, then inserts its reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
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
)
from ...hygiene import validate_properties, validate_text
from ...models import (
    CONSUMABLE_KINDS,
    BillingCustomer,
    Entitlement,
    Feature,
    Reservation,
    ReservationStatus,
)
from ...selectors import owner_ref
from ...types import CheckResult
from ..entitlements.rows import EntitlementRow, _aware
from ..grants.draw import draw
from ..grants.expiry import current
from ..usage.check import _check_result, _load_or_explain, denial_error
from ..usage.pools import pool_of
from ..usage.track import _deduct, _Refused, after_refusal, insufficient_balance
from ..usage.validation import (
    _fingerprint,
    _validate_integer,
    same_payload,
    validate_idempotency_key,
)
from .giveback import Draws
from .reads import ReservationResult, reservation_result

DEFAULT_TTL = timedelta(minutes=10)
MAX_TTL = timedelta(days=7)
_OPEN = ReservationStatus.OPEN


def reserve(
    owner: Any,
    feature: str,
    amount: int,
    *,
    ttl: timedelta = DEFAULT_TTL,
    idempotency_key: str | None = None,
    properties: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ReservationResult:
    """Hold ``amount`` of ``feature`` for ``ttl``; raise as track would when refused.

    A repeated ``idempotency_key`` with the same payload returns the first reservation
    with ``replayed=True``; with another payload it raises :class:`IdempotencyConflict`.
    """
    amount = _validate_positive(amount, "amount")
    ttl = _validate_ttl(ttl)
    properties = validate_properties(properties)
    idempotency_key = validate_idempotency_key(idempotency_key)
    validate_text(feature, "feature")
    fingerprint = _fingerprint(feature, amount, {"ttl": ttl.total_seconds(), "p": properties})
    request = (idempotency_key, fingerprint, properties, ttl, now)
    try:
        return _reserve(owner, feature, amount, request)
    except (InsufficientBalance, NotIncluded, NoPlan):
        pool = pool_of(feature)
        if pool is None:
            raise
    held = _reserve(
        owner, pool.pool, amount * pool.cost, request, credit_use=(pool.feature_id, amount, feature)
    )
    return held


_Request = tuple[str | None, bytes, dict[str, Any], timedelta, datetime | None]


def _reserve(
    owner: Any,
    feature: str,
    amount: int,
    request: _Request,
    *,
    credit_use: tuple[int, int, str] | None = None,
) -> ReservationResult:
    key, fingerprint, _, ttl, fixed_now = request
    if fixed_now is None and not isinstance(owner, BillingCustomer):
        held = _reserve_in_one_update(owner, feature, amount, request, credit_use)
        if held is not None:
            return held
    # Everything the one-statement path does not decide: first use, refusals, grants
    # to draw from, overage or unlimited, due resets or expiries, replays, a fixed clock.
    found = _load_or_explain(owner, feature)
    if isinstance(found, CheckResult):
        raise denial_error(found)
    row = found
    if row.kind not in CONSUMABLE_KINDS:
        raise InvalidRequest(
            "Only metered and credit features can be reserved.", fields={"feature": feature}
        )
    if not row.granted:
        raise denial_error(_check_result(row, 1))
    if key is not None:
        replay = _replay(row.customer_id, key, fingerprint)
        if replay is not None:
            return replay
    for _attempt in range(5):
        moment = fixed_now or timezone.now()
        row = current(row, moment)
        try:
            with transaction.atomic():
                draws, from_grants, balance = _hold(row, amount, moment)
                # A renewal may have reset the period between current() and the
                # deduction; the deduction locked the row, so its period now is the one
                # the hold is in (the closers compare it).
                period_start = _locked_period(row.id) if draws else row.period_start
                hold = _NewHold(
                    customer_id=row.customer_id,
                    entitlement_id=row.id,
                    feature_id=row.feature_id,
                    amount=amount,
                    held=amount if draws else 0,
                    draws=draws,
                    from_grants=from_grants,
                    period_start=period_start,
                    created_at=moment,
                )
                reservation_id = _insert_hold(hold, request, credit_use)
        except IntegrityError:
            if key is None:
                raise
            replay = _replay(row.customer_id, key, fingerprint)
            if replay is None:
                raise
            return replay
        except _Refused:
            row, retry = after_refusal(row.id, amount, moment)
            if retry:
                continue
            raise insufficient_balance(row, amount) from None
        shown = credit_use[2] if credit_use else row.feature
        return _opened(reservation_id, hold, ttl, balance, shown, credit_use)
    raise Contention()  # pragma: no cover - five period boundaries crossed in one call


@dataclass(frozen=True, slots=True)
class _NewHold:
    """What a reserve took, before its row is inserted."""

    customer_id: int
    entitlement_id: int
    feature_id: int
    amount: int
    held: int
    draws: Draws
    from_grants: int
    period_start: datetime | None
    created_at: datetime


def _reserve_in_one_update(
    owner: Any,
    feature: str,
    amount: int,
    request: _Request,
    credit_use: tuple[int, int, str] | None,
) -> ReservationResult | None:
    """The common reserve in two statements: find-and-hold (as track's fast path), then
    the row.

    Only the plan's grant covering the whole amount decides here (no overage, not
    unlimited, no due reset or expiry). None when the conditional UPDATE matches nothing
    or the key was used before: nothing was written, the full path says why.
    """
    key, ttl = request[0], request[3]
    owner_type_id, owner_id = owner_ref(owner)
    moment = timezone.now()
    at = connection.ops.adapt_datetimefield_value(moment)
    params = [amount, at, owner_type_id, owner_id, feature, at, at, at, amount]
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(_hold_by_owner_sql(), params)
                found = cursor.fetchone()
            if found is None:
                return None
            entitlement_id, customer_id, feature_id, usage, included, grant_usage = found[:6]
            remaining, period_start = found[6:]
            hold = _NewHold(
                customer_id=customer_id,
                entitlement_id=entitlement_id,
                feature_id=feature_id,
                amount=amount,
                held=amount,
                draws=[{"grant": None, "amount": amount}],
                from_grants=0,
                period_start=_aware(period_start),
                created_at=moment,
            )
            reservation_id = _insert_hold(hold, request, credit_use)
    except IntegrityError:
        if key is None:
            raise
        return None  # a replay or a conflict: rolled back, answered by the full path
    balance = int(included) - (int(usage) - int(grant_usage)) + int(remaining)
    shown = credit_use[2] if credit_use else feature
    return _opened(reservation_id, hold, ttl, balance, shown, credit_use)


@lru_cache(maxsize=1)
def _hold_by_owner_sql() -> str:
    quote = connection.ops.quote_name
    entitlement = quote(Entitlement._meta.db_table)
    usage = quote("usage")
    kinds = ", ".join(f"'{kind}'" for kind in sorted(CONSUMABLE_KINDS))
    lookup = (
        f"SELECT e.id FROM {entitlement} e "
        f"JOIN {quote(BillingCustomer._meta.db_table)} c ON c.id = e.customer_id "
        f"JOIN {quote(Feature._meta.db_table)} f ON f.id = e.feature_id "
        f"WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s AND f.kind IN ({kinds})"
    )
    return (
        f"UPDATE {entitlement} SET {usage} = {usage} + %s, updated_at = %s "
        f"WHERE id = ({lookup}) AND granted AND NOT unlimited AND NOT allow_overage "
        "AND (period_start IS NULL OR period_start <= %s) "
        "AND (next_reset_at IS NULL OR next_reset_at > %s) "
        "AND (grant_next_expiry IS NULL OR grant_next_expiry > %s) "
        f"AND {usage} - grant_usage + %s <= included "
        f"RETURNING id, customer_id, feature_id, {usage}, included, grant_usage, "
        "grant_remaining, period_start"
    )


#: The columns a reserve writes (the others start NULL), in the order of its INSERT.
_HOLD_COLUMNS = (
    "customer_id",
    "entitlement_id",
    "feature_id",
    "used_feature_id",
    "units",
    "amount",
    "held",
    "draws",
    "from_grants",
    "period_start",
    "status",
    "expires_at",
    "created_at",
    "idempotency_key",
    "request_fingerprint",
    "properties",
)


@lru_cache(maxsize=1)
def _insert_hold_sql() -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _HOLD_COLUMNS)
    return (
        f"INSERT INTO {quote(Reservation._meta.db_table)} ({columns}) "
        f"VALUES ({', '.join(['%s'] * len(_HOLD_COLUMNS))}) RETURNING id"
    )


def _insert_hold(hold: _NewHold, request: _Request, credit_use: tuple[int, int, str] | None) -> int:
    """``INSERT ... RETURNING id`` of the reservation (the ORM's create() costs more here)."""
    key, fingerprint, properties, ttl, _ = request
    ops = connection.ops
    params = [
        hold.customer_id,
        hold.entitlement_id,
        hold.feature_id,
        credit_use[0] if credit_use else None,
        credit_use[1] if credit_use else None,
        hold.amount,
        hold.held,
        ops.adapt_json_value(hold.draws, None),
        hold.from_grants,
        ops.adapt_datetimefield_value(hold.period_start),
        _OPEN.value,
        ops.adapt_datetimefield_value(hold.created_at + ttl),
        ops.adapt_datetimefield_value(hold.created_at),
        key,
        fingerprint,
        ops.adapt_json_value(properties, None),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_hold_sql(), params)
        return int(cursor.fetchone()[0])


def _opened(
    reservation_id: int,
    hold: _NewHold,
    ttl: timedelta,
    balance: int | None,
    feature: str,
    credit_use: tuple[int, int, str] | None,
) -> ReservationResult:
    cost = hold.amount // credit_use[1] if credit_use else None
    return ReservationResult(
        id=reservation_id,
        feature=feature,
        amount=credit_use[1] if credit_use else hold.amount,
        status=_OPEN.value,
        expires_at=hold.created_at + ttl,
        created_at=hold.created_at,
        balance=balance // cost if balance is not None and cost else balance,
        credit_cost=cost,
    )


def _locked_period(entitlement_id: int) -> datetime | None:
    return (
        Entitlement.objects.filter(pk=entitlement_id).values_list("period_start", flat=True).get()
    )


def _hold(row: EntitlementRow, amount: int, moment: datetime) -> tuple[Draws, int, int | None]:
    """Deduct ``amount`` as track would: ``(draws, from_grants, balance after)``."""
    if row.unlimited or row.allow_overage:
        return [], 0, None if row.unlimited else row.balance  # nothing can be refused
    deducted = _deduct(row, amount, moment)
    if deducted is not None:
        return [{"grant": None, "amount": amount}], 0, deducted[1]
    outcome = draw(row.id, amount, moment)
    if outcome is None:
        raise _Refused
    draws = outcome.draws or [{"grant": None, "amount": amount}]
    return draws, outcome.from_grants, outcome.balance_after


def _replay(customer_id: int, key: str, fingerprint: bytes) -> ReservationResult | None:
    found = Reservation.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if found is None:
        return None
    if not same_payload(found.request_fingerprint, fingerprint):
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    return reservation_result(found, replayed=True)


def _validate_positive(value: Any, name: str) -> int:
    value = _validate_integer(value, name)
    if value <= 0:
        raise InvalidRequest(
            f"{name} must be a positive integer.", fields={name: "Must be a positive integer."}
        )
    return value


def _validate_ttl(ttl: Any) -> timedelta:
    if not isinstance(ttl, timedelta) or not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise InvalidRequest(
            f"ttl must be between 1 second and {MAX_TTL.days} days.",
            fields={"ttlSeconds": f"Between 1 and {int(MAX_TTL.total_seconds())}."},
        )
    return ttl
