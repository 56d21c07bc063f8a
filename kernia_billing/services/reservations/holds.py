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
- Expiry gives the hold back exactly once: at the next access to the reservation, the
  next reserve of the same entitlement, a check or track refused for balance, or in
  bulk with ``kernia_expire_reservations``.
- Where nothing can be refused (overage allowed, unlimited) a reservation holds
  nothing (``held`` 0) and its confirm is a plain track: overage is billed exactly once,
  on confirmed usage.
- A reset since the hold was taken wiped its plan part with the period's usage; what it
  drew from grants goes back to them and a confirm then deducts the actual amount in
  the new period, like a track.

Lock order (``services/locking.py``): the entitlement, then the reservation row, then
grants ascending id, then inserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, transaction
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
    Feature,
    Reservation,
    ReservationStatus,
    UsageEvent,
)
from ...types import CheckResult
from ..entitlements.rows import EntitlementRow, _reload
from ..grants.draw import draw
from ..grants.expiry import current, expire_due
from ..grants.totals import lock_entitlement
from ..locking import atomic_with_retry
from ..usage.check import _check_result, _load_or_explain, denial_error
from ..usage.ledger import _record_tracked
from ..usage.pools import pool_of
from ..usage.track import _deduct, _needs_retry, _Refused
from ..usage.validation import _fingerprint, _validate_integer, validate_idempotency_key
from .giveback import _close, _expire_one, _expire_open, _give_back

_CLAIM = (
    "UPDATE {table} SET status = 'confirmed', actual = %s, closed_at = %s "
    "WHERE id = %s AND status = 'open' AND expires_at > %s"
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


def _reserve(
    owner: Any,
    feature: str,
    amount: int,
    request: tuple[str | None, bytes, dict[str, Any], timedelta, datetime | None],
    *,
    credit_use: tuple[int, int, str] | None = None,
) -> ReservationResult:
    key, fingerprint, properties, ttl, fixed_now = request
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
                held = amount if draws else 0
                reservation = Reservation.objects.create(
                    customer_id=row.customer_id,
                    entitlement_id=row.id,
                    feature_id=row.feature_id,
                    used_feature_id=credit_use[0] if credit_use else None,
                    units=credit_use[1] if credit_use else None,
                    amount=amount,
                    held=held,
                    draws=draws,
                    from_grants=from_grants,
                    period_start=row.period_start,
                    expires_at=moment + ttl,
                    created_at=moment,
                    idempotency_key=key,
                    request_fingerprint=fingerprint,
                    properties=properties,
                )
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
        return _result(reservation, balance=balance, feature=shown)
    raise Contention()  # pragma: no cover - five period boundaries crossed in one call


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
    reservation = _get(reservation_id)
    if actual is not None:
        actual = _validate_integer(actual, "actual")
        if actual < 0:
            raise InvalidRequest(
                "actual must be zero or more.", fields={"actual": "Must be zero or more."}
            )
    key = validate_idempotency_key(idempotency_key)
    moment = now or timezone.now()
    if reservation.status == _OPEN and moment < reservation.expires_at:
        for _attempt in range(3):
            try:
                return atomic_with_retry(lambda: _confirm_locked(reservation, actual, key, moment))
            except _ResetDue:
                _apply_due_reset(reservation.entitlement_id, moment)
            except _Lost:
                break
            except IntegrityError:
                if key is None:
                    raise
                raise IdempotencyConflict(
                    "This idempotency key was already used by another ledger row.",
                    fields={"idempotencyKey": key},
                ) from None
        else:  # pragma: no cover - three period boundaries crossed in one call
            raise Contention()
        reservation.refresh_from_db()
    if reservation.status == _OPEN:  # past expiresAt: give it back now (exactly once)
        _expire_one(reservation, moment)
        reservation.refresh_from_db()
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
    return _result(reservation, replayed=True)


def release(reservation_id: Any, *, now: datetime | None = None) -> ReservationResult:
    """Give the whole hold back. Idempotent; a confirmed reservation is 409 closed."""
    reservation = _get(reservation_id)
    moment = now or timezone.now()
    replayed = True
    if reservation.status == _OPEN:
        replayed = not _close(reservation, moment, expire=False)
        reservation.refresh_from_db()
    if reservation.status == ReservationStatus.CONFIRMED:
        raise ReservationClosed(
            "The reservation was confirmed.", fields={"reservation": reservation.pk}
        )
    return _result(reservation, replayed=replayed)


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


def _confirm_locked(
    reservation: Reservation, actual: int | None, key: str | None, moment: datetime
) -> ReservationResult:
    row = lock_entitlement(reservation.entitlement_id)
    if not _in_period(row, moment):
        raise _ResetDue
    cost = reservation.amount // reservation.units if reservation.units else 1
    units = actual if actual is not None else (reservation.units or reservation.amount)
    credits = units * cost
    # The claim, first: every writer that closes a reservation holds its entitlement's
    # lock, so exactly one of confirm, release and expiry wins it.
    at = connection.ops.adapt_datetimefield_value(moment)
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor), [units, at, reservation.pk, at])
        claimed = cursor.rowcount
    if not claimed:
        raise _Lost
    kept, from_grants, after = _settle(reservation, row, credits, moment)
    event = None
    if credits:
        after = after or lock_entitlement(row.id)
        event = _record_tracked(
            UsageEvent(
                customer_id=reservation.customer_id,
                feature_id=reservation.feature_id,
                amount=credits,
                idempotency_key=key,
                request_fingerprint=bytes(reservation.request_fingerprint),
                properties=reservation.properties,
                created_at=moment,
                balance_after=after.balance,
                usage_after=after.usage,
                from_grants=from_grants,
                draws=kept if from_grants else None,
                used_feature_id=reservation.used_feature_id,
                units=units if reservation.units else None,
            ),
            feature=row.feature,
            unlimited=row.unlimited,
        )
        table = connection.ops.quote_name(Reservation._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET event_id = %s WHERE id = %s", [event.pk, reservation.pk]
            )
    reservation.status, reservation.actual = ReservationStatus.CONFIRMED, units
    reservation.closed_at, reservation.event = moment, event
    balance = None if row.unlimited else (event.balance_after if event else None)
    return _result(reservation, balance=balance, feature=None if reservation.units else row.feature)


def _settle(
    reservation: Reservation, row: EntitlementRow, credits: int, moment: datetime
) -> tuple[Draws, int, EntitlementRow | None]:
    """Turn the hold into ``credits`` of usage: ``(draws kept, from grants, row after)``.

    The row after is None when it must be re-read (grants were written).
    """
    same_period = reservation.period_start == row.period_start
    held = reservation.held
    if held and same_period and credits <= held:
        back = held - credits
        kept = _give_back(reservation, back, moment, in_usage=True)
        if back and any(part["grant"] is not None for part in reservation.draws):
            return kept, _grant_total(kept), None  # grant totals were recomputed: re-read
        # Only the plan's grant was given back to: under the entitlement's lock the row
        # after is the locked row less the usage returned (no re-read).
        return kept, _grant_total(kept), replace(row, usage=row.usage - back)
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
    return kept, _grant_total(kept), None


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
    return _get(reservation_id).customer_id


def _get(reservation_id: Any) -> Reservation:
    if isinstance(reservation_id, bool) or not isinstance(reservation_id, int):
        raise UnknownReservation(fields={"reservation": str(reservation_id)[:64]})
    found = None
    if 0 < reservation_id < 2**63:
        # A raw SELECT: compiling the ORM query cost more than running it (bench/).
        found = next(iter(Reservation.objects.raw(_get_sql(), [reservation_id])), None)
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    return found


@lru_cache(maxsize=1)
def _get_sql() -> str:
    quote = connection.ops.quote_name
    return f"SELECT * FROM {quote(Reservation._meta.db_table)} WHERE {quote('id')} = %s"


def _claim_sql(vendor: str) -> str:
    return _CLAIM.format(table=connection.ops.quote_name(Reservation._meta.db_table))


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
    reservation: Reservation,
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
