"""Settle: ``confirm`` keeps the actual amount of a hold and writes its one ledger row,
``release`` gives it all back; ``reserved()`` holds for a block (the semantics:
:mod:`kernia_billing.services.reservations`).

On PostgreSQL a confirm's give-back, ledger row, rollup and claim are one statement.

Lock order: the package's (:mod:`kernia_billing.services.reservations`); a confirm
locks the entitlement and the reservation in one statement, then grants ascending id,
then inserts, and claims the reservation last.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

from django.db import IntegrityError, connection
from django.utils import timezone

from ...exceptions import (
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    ReservationClosed,
    ReservationExpired,
    UnknownReservation,
)
from ...models import Entitlement, Reservation, ReservationStatus, UsageEvent
from ..entitlements.rows import EntitlementRow, _reload
from ..grants.draw import draw
from ..grants.expiry import current
from ..grants.totals import lock_entitlement
from ..locking import atomic_with_retry
from ..usage.ledger import after_recorded, event_params, insert_event_sql
from ..usage.rollups import record_rollup, upsert_sql
from ..usage.track import _deduct, _Refused
from ..usage.validation import _validate_integer, before_period_error, validate_idempotency_key
from .giveback import (
    Draws,
    ReservationRow,
    close_hold,
    expire_hold,
    give_back,
    return_usage,
    split_hold,
)
from .holds import reserve
from .reads import (
    ReservationResult,
    check_reservation_id,
    get_reservation,
    read_hold,
    reservation_result,
)

_OPEN = ReservationStatus.OPEN


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
    check_reservation_id(reservation_id)
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
            work = partial(_confirm_locked, reservation_id, actual, key, moment)
            return atomic_with_retry(work)
        except _ResetDue as due:
            _apply_due_reset(due.entitlement_id, moment)
        except _BeforePeriod:
            if now is not None:
                raise before_period_error(now, moment) from None
            moment = timezone.now()  # a reset this confirm waited behind: the clock moved
        except _Lost:
            break  # not open and live (read under the lock): answered below
        except IntegrityError:
            if key is None:
                raise
            raise IdempotencyConflict(
                "This idempotency key was already used by another ledger row.",
                fields={"idempotencyKey": key},
            ) from None
    else:  # three boundaries crossed in one call, or a period that starts after our clock
        raise Contention()
    reservation, feature = get_reservation(reservation_id)
    if reservation.status == _OPEN:  # past expiresAt: give it back now (exactly once)
        expire_hold(reservation, moment)
        reservation, feature = get_reservation(reservation_id)
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
    return reservation_result(reservation, replayed=True, feature=feature)


def release(reservation_id: Any, *, now: datetime | None = None) -> ReservationResult:
    """Give the whole hold back. Idempotent; a confirmed reservation is 409 closed."""
    reservation, feature = get_reservation(reservation_id)
    moment = now or timezone.now()
    replayed = True
    if reservation.status == _OPEN:
        replayed = not close_hold(reservation, moment, expire=False)
        reservation, feature = get_reservation(reservation_id)
    if reservation.status == ReservationStatus.CONFIRMED:
        raise ReservationClosed(
            "The reservation was confirmed.", fields={"reservation": reservation.pk}
        )
    return reservation_result(reservation, replayed=replayed, feature=feature)


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


class _BeforePeriod(Exception):
    """The moment is before the entitlement's period (a reset committed meanwhile)."""


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
    found = read_hold(reservation_id, lock=True)
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    reservation, row, shown = found
    if reservation.status != _OPEN or moment >= reservation.expires_at:
        raise _Lost
    if not _in_period(row, moment):
        raise _ResetDue(row.id)
    if row.period_start is not None and moment < row.period_start:
        raise _BeforePeriod  # usage cannot be dated before the period it counts in
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
    return reservation_result(reservation, balance=balance, feature=shown)


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
def _confirm_sql(gives_back: bool) -> str:
    """PostgreSQL: give back, the ledger row, its rollup and the claim in one statement.

    Data-modifying CTEs all run, whatever the query reads; the claim's row count says
    whether this confirm won (else the caller rolls the whole transaction back).
    """
    quote = connection.ops.quote_name
    parts = []
    if gives_back:
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
        kept = give_back(reservation, back, moment, in_usage=True)
        if back:
            return kept, _grant_total(kept), None, 0  # grant totals were recomputed: re-read
        return kept, _grant_total(kept), (row.usage, row.balance), 0
    kept = list(reservation.draws)
    need = credits
    if held and same_period:
        need = credits - held  # draw the difference as a track would
    elif held:
        give_back(reservation, held, moment, in_usage=False)
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


def _apply_due_reset(entitlement_id: int, moment: datetime) -> None:
    current(_reload(entitlement_id), moment)


def _in_period(row: EntitlementRow, moment: datetime) -> bool:
    return not row.reset_due(moment)


def _grant_total(draws: Draws) -> int:
    return sum(int(p["amount"]) for p in draws if p["grant"] is not None)


def _merge(draws: Draws) -> Draws:
    merged: dict[Any, int] = {}
    for part in draws:
        merged[part["grant"]] = merged.get(part["grant"], 0) + int(part["amount"])
    return [{"grant": g, "amount": n} for g, n in merged.items() if n]
