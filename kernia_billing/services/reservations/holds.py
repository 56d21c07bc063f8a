"""Holds: ``reserve`` takes balance now, ``confirm`` settles it with the actual amount.

A hold is taken exactly like a track deducts (the plan's grant in one conditional
``UPDATE``, else the multi-grant draw across the grants in consumption order), but
writes a :class:`~kernia_billing.models.Reservation` instead of a ledger row. The held
amount is therefore part of the entitlement's ``usage`` at once, and check and track
see the lower balance with no extra query.

- ``confirm(actual)`` keeps the first ``actual`` units of the hold (in consumption
  order), gives the rest back and writes the one ledger row (so only confirmed usage
  reaches the ledger and the metering outbox). More than was held draws the difference
  as a track would; refused, nothing is done and the hold stays open.
- ``release`` gives everything back. Confirm and release are idempotent.
- Expiry gives the hold back exactly once: at the next access to the reservation, a
  reserve, check or track of the same entitlement refused for balance, or in bulk with
  ``kernia_expire_reservations``.
- Where nothing can be refused (overage allowed, unlimited) a reservation holds
  nothing (``held`` 0) and its confirm is a plain track: overage is billed exactly once,
  on confirmed usage.
- A reset since the hold was taken wiped its plan part with the period's usage; what it
  drew from grants goes back to them and a confirm then deducts the actual amount in
  the new period, like a track.

Lock order (``services/locking.py``): the entitlement (a confirm reads the reservation
in the same statement), then grants ascending id, then inserts; the reservation row is
closed with a conditional ``UPDATE`` (a confirm's last, with its ledger row's id).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from ...exceptions import (
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NoPlan,
    NotIncluded,
    ReservationClosed,
    ReservationExpired,
    UnknownReservation,
)
from ...hygiene import validate_properties, validate_text
from ...models import (
    CONSUMABLE_KINDS,
    BillingCustomer,
    Entitlement,
    Feature,
    Reservation,
    ReservationStatus,
    UsageEvent,
)
from ...selectors import owner_ref
from ...types import CheckResult
from ..entitlements.rows import EntitlementRow, _aware, _reload, _select_with
from ..grants.draw import draw
from ..grants.expiry import current, expire_due
from ..grants.totals import lock_entitlement
from ..locking import atomic_with_retry
from ..usage.check import _check_result, _load_or_explain, denial_error
from ..usage.ledger import after_recorded, event_params, insert_event_sql
from ..usage.pools import pool_of
from ..usage.rollups import record_rollup, upsert_sql
from ..usage.track import _deduct, _needs_retry, _Refused
from ..usage.validation import _fingerprint, _validate_integer, validate_idempotency_key
from .giveback import (
    AnyReservation,
    ReservationRow,
    _close,
    _expire_one,
    _expire_open,
    _give_back,
    return_usage,
    split_hold,
)

DEFAULT_TTL = timedelta(minutes=10)
MAX_TTL = timedelta(days=7)
_OPEN = ReservationStatus.OPEN

Draws = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ReservationResult:
    """A reservation as every door answers it; amounts in the reserved feature's units."""

    id: int
    feature: str
    amount: int
    status: str
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None = None
    actual: int | None = None
    event_id: int | None = None
    balance: int | None = None
    credit_cost: int | None = None
    replayed: bool = False


# --- reserve -----------------------------------------------------------------------------


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
                hold = _NewHold(
                    customer_id=row.customer_id,
                    entitlement_id=row.id,
                    feature_id=row.feature_id,
                    amount=amount,
                    held=amount if draws else 0,
                    draws=draws,
                    from_grants=from_grants,
                    period_start=row.period_start,
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
            row = _reload(row.id)
            if row.expiry_due(moment):
                row = expire_due(row.id, moment)
            if not row.granted:
                raise denial_error(_check_result(row, 1)) from None
            if _needs_retry(row, moment):
                continue
            if _expire_open(Q(entitlement_id=row.id), moment):
                continue  # expired holds were given back: try again
            raise InsufficientBalance(
                f"Balance {row.balance} is less than {amount}.",
                balance=row.balance,
                fields={"amount": amount, "balance": row.balance},
            ) from None
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
    """The common reserve in two statements, as track's: find-and-hold, then the row.

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
    if bytes(found.request_fingerprint) != fingerprint:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    return _result(found, replayed=True)


# --- confirm and release -----------------------------------------------------------------


class _Lost(Exception):
    """The reservation was no longer open and live when claimed: roll back, explain."""


def confirm(
    reservation_id: Any,
    *,
    actual: int | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> ReservationResult:
    """Record the actual usage (default: the reserved amount) and give back the rest.

    Idempotent: confirming a confirmed reservation with the same actual (or none)
    answers it again with ``replayed=True``. After ``expiresAt``:
    :class:`ReservationExpired` (the hold is given back); after a release:
    :class:`ReservationClosed`. More than was held draws the difference as a track
    would; refused, :class:`InsufficientBalance` and nothing changes (the hold stays).
    """
    _check_id(reservation_id)
    if actual is not None:
        actual = _validate_integer(actual, "actual")
        if actual < 0:
            raise InvalidRequest(
                "actual must be zero or more.", fields={"actual": "Must be zero or more."}
            )
    key = validate_idempotency_key(idempotency_key)
    moment = now or timezone.now()
    for _attempt in range(3):
        try:
            return atomic_with_retry(lambda: _confirm_locked(reservation_id, actual, key, moment))
        except _ResetDue as due:
            _apply_due_reset(due.entitlement_id, moment)
        except _Lost:
            break  # not open and live (read under the lock): answered below
        except IntegrityError:
            if key is None:
                raise
            raise IdempotencyConflict(
                "This idempotency key was already used by another ledger row.",
                fields={"idempotencyKey": key},
            ) from None
    else:  # pragma: no cover - three period boundaries crossed in one call
        raise Contention()
    reservation, feature = _get(reservation_id)
    if reservation.status == _OPEN:  # past expiresAt: give it back now (exactly once)
        _expire_one(reservation, moment)
        reservation, feature = _get(reservation_id)
    if reservation.status == ReservationStatus.EXPIRED:
        raise ReservationExpired(fields={"reservation": reservation.pk})
    if reservation.status == ReservationStatus.RELEASED:
        raise ReservationClosed(
            "The reservation was released.", fields={"reservation": reservation.pk}
        )
    if actual is not None and actual != reservation.actual:
        raise ReservationClosed(
            f"The reservation was already confirmed with {reservation.actual}.",
            fields={"reservation": reservation.pk, "actual": reservation.actual},
        )
    return _result(reservation, replayed=True, feature=feature)


def release(reservation_id: Any, *, now: datetime | None = None) -> ReservationResult:
    """Give the whole hold back. Idempotent; a confirmed reservation is 409 closed."""
    reservation, feature = _get(reservation_id)
    moment = now or timezone.now()
    replayed = True
    if reservation.status == _OPEN:
        replayed = not _close(reservation, moment, expire=False)
        reservation, feature = _get(reservation_id)
    if reservation.status == ReservationStatus.CONFIRMED:
        raise ReservationClosed(
            "The reservation was confirmed.", fields={"reservation": reservation.pk}
        )
    return _result(reservation, replayed=replayed, feature=feature)


@dataclass
class Hold:
    """What ``with reserved(...) as hold`` gives: confirm it before the block ends."""

    reservation: ReservationResult
    closed: ReservationResult | None = None

    @property
    def id(self) -> int:
        return self.reservation.id

    def confirm(self, actual: int | None = None, **kwargs: Any) -> ReservationResult:
        self.closed = confirm(self.reservation.id, actual=actual, **kwargs)
        return self.closed

    def release(self) -> ReservationResult:
        self.closed = release(self.reservation.id)
        return self.closed


@contextmanager
def reserved(owner: Any, feature: str, amount: int, **kwargs: Any) -> Iterator[Hold]:
    """Reserve for the block; release when it raises (or ends without a confirm)."""
    hold = Hold(reserve(owner, feature, amount, **kwargs))
    try:
        yield hold
    except BaseException:
        if hold.closed is None:
            release(hold.id)
        raise
    if hold.closed is None:
        hold.release()


class _ResetDue(Exception):
    """The entitlement's period ended: apply the reset outside the lock, then retry."""

    def __init__(self, entitlement_id: int) -> None:
        super().__init__(entitlement_id)
        self.entitlement_id = entitlement_id


def _confirm_locked(
    reservation_id: int, actual: int | None, key: str | None, moment: datetime
) -> ReservationResult:
    # One statement: the entitlement locked, then the reservation read (and locked)
    # beside it. Locking it too makes PostgreSQL hand back the row as a closer that
    # held the entitlement committed it, not as it was before this confirm waited.
    found = _read_hold(reservation_id, lock=True)
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    reservation, row, shown = found
    if reservation.status != _OPEN or moment >= reservation.expires_at:
        raise _Lost
    if not _in_period(row, moment):
        raise _ResetDue(row.id)
    cost = reservation.amount // reservation.units if reservation.units else 1
    units = actual if actual is not None else (reservation.units or reservation.amount)
    credits = units * cost
    kept, from_grants, after, usage_back = _settle(reservation, row, credits, moment)
    event = None
    if credits:
        if after is None:
            fresh = lock_entitlement(row.id)
            after = (fresh.usage, fresh.balance)
        event = UsageEvent(
            customer_id=reservation.customer_id,
            feature_id=reservation.feature_id,
            amount=credits,
            idempotency_key=key,
            request_fingerprint=bytes(reservation.request_fingerprint),
            properties=reservation.properties,
            created_at=moment,
            balance_after=after[1],
            usage_after=after[0],
            from_grants=from_grants,
            draws=kept if from_grants else None,
            used_feature_id=reservation.used_feature_id,
            units=units if reservation.units else None,
        )
    # The claim comes last, in the statement that writes the ledger row where it can:
    # every writer that closes a reservation holds its entitlement's lock, so exactly
    # one of confirm, release and expiry wins it; a confirm that loses rolls back.
    if not _claim(reservation, units, event, moment, usage_back=usage_back):
        raise _Lost
    if event is not None:
        after_recorded(event, feature=row.feature, unlimited=row.unlimited)
    reservation.status, reservation.actual = ReservationStatus.CONFIRMED, units
    reservation.closed_at, reservation.event_id = moment, event.pk if event else None
    balance = None if row.unlimited else (event.balance_after if event else None)
    return _result(reservation, balance=balance, feature=shown)


def _claim(
    reservation: ReservationRow,
    units: int,
    event: UsageEvent | None,
    moment: datetime,
    *,
    usage_back: int,
) -> bool:
    """Close the reservation as confirmed (with its ledger row, if any); True if it won.

    ``usage_back``: plan usage the confirm gives back, not yet written. On PostgreSQL
    that, the ledger row, its rollup and the claim are one statement.
    """
    at = connection.ops.adapt_datetimefield_value(moment)
    claim = [units, at, reservation.pk, at]
    if event is not None and connection.vendor == "postgresql":
        params = [usage_back, at, reservation.entitlement_id] if usage_back else []
        params += event_params(event, with_rollup=True) + claim
        with connection.cursor() as cursor:
            cursor.execute(_confirm_sql(bool(usage_back)), params)
            event.pk, claimed = cursor.fetchone()
        return bool(claimed)
    if usage_back:
        return_usage(reservation.entitlement_id, usage_back, 0, at)
    event_id = None
    with connection.cursor() as cursor:
        if event is not None:
            cursor.execute(insert_event_sql(), event_params(event))
            event.pk = event_id = cursor.fetchone()[0]
            record_rollup(event.customer_id, event.feature_id, event.created_at, event.amount)
        cursor.execute(_claim_sql(), [event_id, *claim])
        return bool(cursor.rowcount)


_CLAIM = (
    "UPDATE {table} SET status = 'confirmed', event_id = {event}, actual = %s, closed_at = %s "
    "WHERE id = %s AND status = 'open' AND expires_at > %s"
)


@lru_cache(maxsize=1)
def _claim_sql() -> str:
    table = connection.ops.quote_name(Reservation._meta.db_table)
    return _CLAIM.format(table=table, event="%s")


@lru_cache(maxsize=2)
def _confirm_sql(give_back: bool) -> str:
    """PostgreSQL: give back, the ledger row, its rollup and the claim in one statement.

    Data-modifying CTEs all run, whatever the query reads; the claim's row count says
    whether this confirm won (else the caller rolls the whole transaction back).
    """
    quote = connection.ops.quote_name
    parts = []
    if give_back:
        usage = quote("usage")
        parts.append(
            f"g AS (UPDATE {quote(Entitlement._meta.db_table)} SET {usage} = {usage} - %s, "
            "updated_at = %s WHERE id = %s)"
        )
    table = quote(Reservation._meta.db_table)
    claim = _CLAIM.format(table=table, event="(SELECT id FROM ev)")
    parts += [
        f"ev AS ({insert_event_sql()})",
        f"r AS ({upsert_sql(1)})",
        f"c AS ({claim} RETURNING id)",
    ]
    return f"WITH {', '.join(parts)} SELECT ev.id, (SELECT count(*) FROM c) FROM ev"


def _settle(
    reservation: ReservationRow, row: EntitlementRow, credits: int, moment: datetime
) -> tuple[Draws, int, tuple[int, int] | None, int]:
    """Turn the hold into ``credits`` of usage: ``(draws kept, from grants, (usage,
    balance) after, plan usage to give back)``.

    The usage and balance after are None when the row must be re-read (grants were
    written). The plan usage to give back is left to :func:`_claim`, which folds it into
    its statement.
    """
    same_period = reservation.period_start == row.period_start
    held = reservation.held
    if held and same_period and credits <= held:
        back = held - credits
        if not any(part["grant"] is not None for part in reservation.draws):
            # Only the plan's grant is given back to: under the entitlement's lock the
            # row after is the locked row less that usage (no re-read, no write yet).
            kept, _ = split_hold(reservation.draws, back)
            return kept, 0, (row.usage - back, row.balance + back), back
        kept = _give_back(reservation, back, moment, in_usage=True)
        if back:
            return kept, _grant_total(kept), None, 0  # grant totals were recomputed: re-read
        return kept, _grant_total(kept), (row.usage, row.balance), 0
    kept = list(reservation.draws)
    need = credits
    if held and same_period:
        need = credits - held  # draw the difference as a track would
    elif held:
        _give_back(reservation, held, moment, in_usage=False)
        kept = []
    if need:
        try:
            kept = _merge(kept + _deduct_as_track(row, need, moment))
        except _Refused:
            balance = lock_entitlement(row.id).balance
            raise InsufficientBalance(
                f"Balance {balance} does not cover the {need} beyond the hold.",
                balance=balance,
                fields={"actual": credits, "reserved": reservation.amount, "balance": balance},
            ) from None
    return kept, _grant_total(kept), None, 0


def _deduct_as_track(row: EntitlementRow, amount: int, moment: datetime) -> Draws:
    """Deduct as track does (overage and unlimited included): the draws."""
    if _deduct(row, amount, moment) is not None:
        return [{"grant": None, "amount": amount}]
    outcome = draw(row.id, amount, moment)
    if outcome is None:
        raise _Refused
    return outcome.draws or [{"grant": None, "amount": amount}]


# --- expiry and reads --------------------------------------------------------------------


def list_reservations(
    customer_id: int | None, *, feature: str | None = None
) -> list[ReservationResult]:
    """The customer's open reservations, soonest-expiring first (expired ones given back)."""
    if customer_id is None:
        return []
    _expire_open(Q(customer_id=customer_id), timezone.now())
    rows = Reservation.objects.filter(customer_id=customer_id, status=_OPEN)
    if feature is not None:
        rows = rows.filter(Q(feature__key=feature) | Q(used_feature__key=feature))
    keys = dict(Feature.objects.values_list("pk", "key"))
    found = rows.order_by("expires_at", "pk")[:500]
    return [_result(r, feature=keys[r.used_feature_id or r.feature_id]) for r in found]


def customer_of(reservation_id: Any) -> int:
    """The customer a reservation belongs to (404 when there is none)."""
    _check_id(reservation_id)
    with connection.cursor() as cursor:
        cursor.execute(_customer_of_sql(), [reservation_id])
        found = cursor.fetchone()
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    return int(found[0])


def _check_id(reservation_id: Any) -> None:
    if isinstance(reservation_id, bool) or not isinstance(reservation_id, int):
        raise UnknownReservation(fields={"reservation": str(reservation_id)[:64]})
    if not 0 < reservation_id < 2**63:
        raise UnknownReservation(fields={"reservation": reservation_id})


def _get(reservation_id: Any) -> tuple[ReservationRow, str]:
    """The reservation and the key of the feature it reserved (404 when there is none)."""
    _check_id(reservation_id)
    found = _read_hold(reservation_id, lock=False)
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    return found[0], found[2]


def _read_hold(
    reservation_id: int, *, lock: bool
) -> tuple[ReservationRow, EntitlementRow, str] | None:
    """One statement: the reservation, its entitlement's row and the key of the feature
    reserved (a credit pool's used feature). ``lock``: the entitlement (step 2 of the lock
    order), then the reservation (locked in the order the ``OF`` list names them)."""
    # Raw and converted here: a RawQuerySet cost more to build than the query (bench/).
    where = "r.id = %s"
    if lock and connection.features.has_select_for_update_of:
        where += " FOR UPDATE OF e, r"
    also, join = _hold_select()
    found = _select_with(where, [reservation_id], also=also, join=join)
    if found is None:
        return None
    row, values = found
    columns = list(values[:-1])
    for index, convert in _hold_converters():
        if columns[index] is not None:
            columns[index] = convert(columns[index])
    return ReservationRow(*columns), row, values[-1] or row.feature


@lru_cache(maxsize=1)
def _hold_select() -> tuple[str, str]:
    """The reservation's columns (model order) and the used feature's key; their joins."""
    quote = connection.ops.quote_name
    columns = [f"r.{quote(str(field.column))}" for field in Reservation._meta.concrete_fields]
    join = (
        f"JOIN {quote(Reservation._meta.db_table)} r ON r.entitlement_id = e.id "
        f"LEFT JOIN {quote(Feature._meta.db_table)} uf ON uf.id = r.used_feature_id "
    )
    return ", ".join([*columns, "uf.key"]), join


@lru_cache(maxsize=1)
def _hold_converters() -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """``(column index, converter)``: what the ORM would apply to the columns read raw
    (the drivers differ for datetimes; JSON comes as text from both)."""
    converters: list[tuple[int, Callable[[Any], Any]]] = []
    for index, field in enumerate(Reservation._meta.concrete_fields):
        if isinstance(field, models.DateTimeField):
            converters.append((index, _aware))
        elif isinstance(field, models.JSONField):
            converters.append((index, _json))
        elif isinstance(field, models.BinaryField):
            converters.append((index, bytes))
    return tuple(converters)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@lru_cache(maxsize=1)
def _customer_of_sql() -> str:
    table = connection.ops.quote_name(Reservation._meta.db_table)
    return f"SELECT customer_id FROM {table} WHERE id = %s"


def _apply_due_reset(entitlement_id: int, moment: datetime) -> None:
    current(_reload(entitlement_id), moment)


def _in_period(row: EntitlementRow, moment: datetime) -> bool:
    return row.next_reset_at is None or moment < row.next_reset_at


def _grant_total(draws: Draws) -> int:
    return sum(int(p["amount"]) for p in draws if p["grant"] is not None)


def _merge(draws: Draws) -> Draws:
    merged: dict[Any, int] = {}
    for part in draws:
        merged[part["grant"]] = merged.get(part["grant"], 0) + int(part["amount"])
    return [{"grant": g, "amount": n} for g, n in merged.items() if n]


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


def _result(
    reservation: AnyReservation,
    *,
    balance: int | None = None,
    replayed: bool = False,
    feature: str | None = None,
) -> ReservationResult:
    cost = reservation.amount // reservation.units if reservation.units else None
    if feature is None:
        used = reservation.used_feature_id or reservation.feature_id
        feature = Feature.objects.filter(pk=used).values_list("key", flat=True).get()
    return ReservationResult(
        id=reservation.pk,
        feature=feature,
        amount=reservation.units or reservation.amount,
        status=reservation.status,
        expires_at=reservation.expires_at,
        created_at=reservation.created_at,
        closed_at=reservation.closed_at,
        actual=reservation.actual,
        event_id=reservation.event_id,
        balance=balance // cost if balance is not None and cost else balance,
        credit_cost=cost,
        replayed=replayed,
    )
