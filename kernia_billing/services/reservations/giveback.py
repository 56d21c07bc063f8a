"""Giving holds back: release, expiry (lazy and in bulk). Imports nothing of usage, so
check and track can give back expired holds when they refuse for balance.

Lock order: the package's (:mod:`kernia_billing.services.reservations`); here the
entitlement, then the reservation row claimed, then the grants given back to.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models import F, Q, Sum
from django.utils import timezone

from ...models import Entitlement, Grant, Reservation, ReservationStatus
from ..grants.totals import lock_entitlement, refresh_totals
from ..locking import atomic_with_retry

_OPEN = ReservationStatus.OPEN

Draws = list[dict[str, Any]]


@dataclass(slots=True)
class ReservationRow:
    """A reservation as confirm and release read it: one raw SELECT, no model instance
    (building one cost more than the query, bench/). Fields follow the model's columns."""

    id: int
    customer_id: int
    entitlement_id: int
    feature_id: int
    used_feature_id: int | None
    units: int | None
    amount: int
    held: int
    draws: Draws
    from_grants: int
    period_start: datetime | None
    status: str
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    actual: int | None
    event_id: int | None
    idempotency_key: str | None
    request_fingerprint: bytes
    properties: dict[str, Any]

    @property
    def pk(self) -> int:
        return self.id


_ROW_FIELDS = [field.name for field in fields(ReservationRow)]
assert [f.attname for f in Reservation._meta.concrete_fields] == _ROW_FIELDS, "follows the model"

#: Either form of a reservation the closers take.
AnyReservation = Reservation | ReservationRow


def expire_reservations(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Give back every open hold whose ``expires_at`` passed (cron-safe, concurrent-safe).

    Each hold is closed under its entitlement's lock after re-reading its status, so
    any number of runners (and lazy expiry) give each hold back exactly once.
    """
    return expire_open_holds(Q(), now or timezone.now(), limit=limit)


def expire_due_holds(entitlement_id: int, now: datetime) -> int:
    """Lazy expiry for one entitlement (a check or track refused for balance)."""
    return expire_open_holds(Q(entitlement_id=entitlement_id), now)


def expire_open_holds(where: Q, now: datetime, *, limit: int | None = None) -> int:
    due = Reservation.objects.filter(where, status=_OPEN, expires_at__lte=now).order_by("pk")
    rows = due.only(*_CLOSE_FIELDS)
    return sum(expire_hold(r, now) for r in (rows[:limit] if limit else rows))


_CLOSE_FIELDS = (
    "pk",
    "entitlement_id",
    "customer_id",
    "feature_id",
    "held",
    "draws",
    "period_start",
    "expires_at",
)


def held_by_plan(entitlement_id: int, period_start: datetime | None) -> int:
    """What the open holds of the period hold of the plan's grant (in its ``usage``).

    A reset wipes it with the period's usage and a later confirm deducts it in the new
    period, so it was never usage of the period: rollovers do not count it as used.
    Exact under the entitlement's lock, which every writer of holds takes.
    """
    holds = Reservation.objects.filter(
        entitlement_id=entitlement_id, status=_OPEN, period_start=period_start
    )
    plan_part = holds.aggregate(total=Sum(F("held") - F("from_grants")))["total"]
    return int(plan_part or 0)


def follow_period(
    entitlement_id: int, old_start: datetime | None, new_start: datetime | None
) -> int:
    """A plan edit moved the entitlement's period and kept its usage (a new reset period):
    its open holds are still in that usage, so they move to the new period with it
    (closers compare periods: a hold left behind would never be given back).

    Call in the transaction that moves the entitlement, after its ``UPDATE`` (which holds
    the entitlement's lock): the lock order of every other writer of holds.
    """
    holds = Reservation.objects.filter(
        entitlement_id=entitlement_id, status=_OPEN, period_start=old_start
    )
    return holds.update(period_start=new_start)


def close_hold(reservation: AnyReservation, moment: datetime, *, expire: bool) -> bool:
    """Claim and give back the whole hold: released (expired once past ``expires_at``).

    ``expire`` claims only a hold past its expiry. True if this call closed it.
    """

    def work() -> bool:
        row = lock_entitlement(reservation.entitlement_id)
        claim = Reservation.objects.filter(pk=reservation.pk, status=_OPEN)
        if expire:
            claim = claim.filter(expires_at__lte=moment)
        late = moment >= reservation.expires_at
        status = ReservationStatus.EXPIRED if late else ReservationStatus.RELEASED
        if not claim.update(status=status, closed_at=moment):
            return False
        if reservation.held:
            same_period = reservation.period_start == row.period_start
            give_back(reservation, reservation.held, moment, in_usage=same_period)
        return True

    return atomic_with_retry(work)


def expire_hold(reservation: AnyReservation, moment: datetime) -> bool:
    """Give back one hold past its ``expires_at``; True if this call closed it."""
    return close_hold(reservation, moment, expire=True)


def give_back(reservation: AnyReservation, n: int, moment: datetime, *, in_usage: bool) -> Draws:
    """Return the last ``n`` units of the hold (reverse consumption order); the rest is kept.

    ``in_usage``: the hold is still in this period's usage (no reset since). Units
    returned to a grant that expired (or was revoked) meanwhile expire (are revoked)
    with it. Runs under the
    entitlement's lock; locks the grants it returns to, ascending id.
    """
    kept, returned = split_hold(reservation.draws, n)
    to_grants = {g: k for g, k in returned.items() if g is not None and k}
    if to_grants:
        locked = (
            Grant.objects.filter(pk__in=sorted(to_grants))
            .order_by("pk")
            .select_for_update()
            .values_list("pk", "expires_at", "revoked_at")
        )
        for grant_id, expires_at, revoked_at in list(locked):
            back = to_grants[grant_id]
            # What goes back to a grant that expired or was revoked meanwhile goes with it.
            gone = expires_at is not None and expires_at <= moment
            revoked = not gone and revoked_at is not None
            Grant.objects.filter(pk=grant_id).update(
                consumed=F("consumed") - back,
                expired=F("expired") + (back if gone else 0),
                revoked=F("revoked") + (back if revoked else 0),
            )
    total = sum(returned.values())
    if in_usage and total:
        return_usage(reservation.entitlement_id, total, sum(to_grants.values()))
    if to_grants:
        refresh_totals(reservation.entitlement_id, reservation.customer_id, reservation.feature_id)
    return kept


def split_hold(draws: Draws, n: int) -> tuple[Draws, dict[int | None, int]]:
    """``(kept, returned)``: the last ``n`` units of ``draws`` go back, per grant (None:
    the plan's grant); what is kept stays in consumption order."""
    kept = [dict(part) for part in draws]
    returned: dict[int | None, int] = {}
    for part in reversed(kept):
        if n == 0:
            break
        take = min(int(part["amount"]), n)
        part["amount"] -= take
        returned[part["grant"]] = returned.get(part["grant"], 0) + take
        n -= take
    return [part for part in kept if part["amount"] > 0], returned


def return_usage(entitlement_id: int, total: int, from_grants: int, at: Any = None) -> None:
    """Take ``total`` (``from_grants`` of it drawn from grants) off the period's usage.

    ``at``: ``updated_at``, adapted for the database (default: now).
    """
    # Raw: the ORM's UPDATE cost more to build than to run on this path (bench/).
    params = [total, from_grants, _now_value() if at is None else at, entitlement_id]
    with connection.cursor() as cursor:
        cursor.execute(_return_usage_sql(), params)


@lru_cache(maxsize=1)
def _return_usage_sql() -> str:
    quote = connection.ops.quote_name
    return (
        f"UPDATE {quote(Entitlement._meta.db_table)} SET {quote('usage')} = "
        f"{quote('usage')} - %s, grant_usage = grant_usage - %s, updated_at = %s WHERE id = %s"
    )


def _now_value() -> Any:
    return connection.ops.adapt_datetimefield_value(timezone.now())
