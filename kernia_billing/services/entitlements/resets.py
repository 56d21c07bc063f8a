"""Reset periods: the current period of an entitlement, and resets that happen exactly once."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from ...models import (
    BillingCustomer,
    Entitlement,
    UsageEvent,
)
from ...models.catalog import ResetPeriod
from ...periods import period_containing
from ..grants.rollovers import reset_with_rollover, roll_over_at_boundary
from ..reservations.giveback import held_by_plan
from .rows import EntitlementRow, _aware, _merge_returned, _reload, returning_sql

# --- periods and resets ------------------------------------------------------------------


def _reset_unit(entitlement_reset: str, customer: BillingCustomer) -> tuple[str, int]:
    if entitlement_reset == ResetPeriod.BILLING:
        return customer.billing_interval or "month", customer.billing_interval_count or 1
    return entitlement_reset, 1


def _anchor(customer: BillingCustomer) -> datetime:
    return customer.current_period_start or customer.created_at


def current_period(
    reset_period: str, customer: BillingCustomer, now: datetime
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """``(anchor, period_start, next_reset_at)`` of a reset period for this customer now."""
    if reset_period == ResetPeriod.NONE:
        return None, None, None
    if (
        reset_period == ResetPeriod.BILLING
        and customer.current_period_start
        and customer.current_period_end
        and customer.current_period_start <= now < customer.current_period_end
    ):
        return (
            customer.current_period_start,
            customer.current_period_start,
            customer.current_period_end,
        )
    anchor = _anchor(customer)
    unit, count = _reset_unit(reset_period, customer)
    start, end = period_containing(anchor, unit, now, count)
    return anchor, start, end


def next_period(entitlement: EntitlementRow, now: datetime) -> tuple[datetime, datetime]:
    """``(period_start, next_reset_at)`` of the period containing ``now`` (a due reset's)."""
    unit, count = _row_unit(entitlement)
    return period_containing(entitlement.reset_anchor_or_default, unit, now, count)


def _row_unit(entitlement: EntitlementRow) -> tuple[str, int]:
    if entitlement.reset_period == ResetPeriod.BILLING:
        return entitlement.billing_interval or "month", entitlement.billing_interval_count or 1
    return entitlement.reset_period, 1


def reset_if_due(entitlement: EntitlementRow, now: datetime) -> EntitlementRow:
    """Apply a reset that fell due, exactly once under concurrency; return fresh state.

    One statement when it resets: the conditional ``UPDATE`` returns the row's new
    columns (a second query only when another writer reset it first).
    """
    if not entitlement.reset_due(now):
        return entitlement
    if entitlement.rollover_max > 0:
        unit, count = _row_unit(entitlement)
        return reset_with_rollover(entitlement, now, unit, count)
    start, end = next_period(entitlement, now)
    with connection.cursor() as cursor:
        # Only the first of any number of concurrent resets matches the old boundary.
        cursor.execute(
            reset_rows_sql(1, returning=True),
            reset_rows_params([(entitlement.id, entitlement.next_reset_at, start, end)]),
        )
        returned = cursor.fetchone()
    if returned is None:
        return _reload(entitlement.id)
    return _merge_returned(entitlement, returned)


@lru_cache(maxsize=16)
def reset_rows_sql(count: int, *, returning: bool = False) -> str:
    """The reset of ``count`` entitlements (the lazy reset's one, a storm's batch): usage
    starts again at zero in the new period, only where ``next_reset_at`` is still the old
    boundary (a row another writer reset first is left alone). Parameters:
    :func:`reset_rows_params`."""
    table = _quote(Entitlement._meta.db_table)
    values = ", ".join(["(%s, %s, %s, %s)"] * count)
    # VALUES columns are column1..column4 on PostgreSQL and SQLite alike.
    return (
        f"UPDATE {table} SET {_quote('usage')} = 0, grant_usage = 0, period_start = v.column3, "
        f"next_reset_at = v.column4, updated_at = %s FROM (VALUES {values}) AS v "
        f"WHERE {table}.id = v.column1 AND {table}.next_reset_at = v.column2"
        f"{' ' + returning_sql() if returning else ''}"
    )


def reset_rows_params(
    rows: list[tuple[int, datetime | None, datetime, datetime]],
) -> list[Any]:
    """:func:`reset_rows_sql`'s parameters: ``(id, old next_reset_at, period_start,
    next_reset_at)`` a row."""
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = [adapt(timezone.now())]
    for entitlement_id, old_boundary, start, end in rows:
        params += [entitlement_id, adapt(old_boundary), adapt(start), adapt(end)]
    return params


@lru_cache(maxsize=1)
def reset_and_deduct_sql() -> str:
    """PostgreSQL: :func:`reset_rows_sql` of one entitlement and a deduction in its new
    period, as one ``UPDATE``: the first track after a boundary. Usage becomes the amount
    (all the new period has used) where the reset is still due at the old boundary and
    the plan's grant covers the amount from zero (as ``fast_track.PLAN_COVERS`` with
    usage and ``grant_usage`` at 0). Without rollover only: a rollover is a grant. Returns
    what ``fast_track``'s deduction returns. Parameters: :func:`reset_and_deduct_params`.
    """
    usage = _quote("usage")
    return (
        f"UPDATE {_quote(Entitlement._meta.db_table)} SET {usage} = %s::bigint, "
        "grant_usage = 0, period_start = %s::timestamptz, next_reset_at = %s::timestamptz, "
        "updated_at = %s::timestamptz "
        "WHERE id = %s::bigint AND next_reset_at = %s::timestamptz AND rollover_max = 0 "
        "AND granted AND %s::bigint > 0 "
        "AND (grant_next_expiry IS NULL OR grant_next_expiry > %s::timestamptz) "
        "AND (unlimited OR %s::bigint <= included OR (allow_overage AND grant_remaining = 0)) "
        f"RETURNING customer_id, feature_id, {usage}, included, unlimited, grant_usage, "
        "grant_remaining"
    )


def reset_and_deduct_params(
    entitlement: EntitlementRow, amount: int, moment: datetime
) -> list[Any]:
    start, end = next_period(entitlement, moment)
    adapt = connection.ops.adapt_datetimefield_value
    at = adapt(moment)
    old = adapt(entitlement.next_reset_at)
    return [amount, adapt(start), adapt(end), at, entitlement.id, old, amount, at, amount]


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def reset_for_new_period(customer: BillingCustomer, period_start: datetime) -> int:
    """A new Stripe billing period began: reset ``billing`` entitlements once.

    Usage is recomputed from the ledger since ``period_start`` rather than set to
    zero, so usage tracked after the boundary but before the webhook arrived
    stays counted in the new period. The rows are locked before the ledger is
    summed, so a track committing meanwhile is counted, not overwritten. Must run
    inside a transaction. Returns how many entitlements reset.

    Two statements whatever the number of features (plus a few per feature with
    rollovers): the lock, then one ``UPDATE`` summing each row's events since the
    boundary on the customer + feature + time index. Raw SQL: building the ORM's
    queries cost more than running them.
    """
    adapt = connection.ops.adapt_datetimefield_value
    boundary = adapt(period_start)
    with connection.cursor() as cursor:
        cursor.execute(_lock_due_sql(), [customer.pk, ResetPeriod.BILLING, boundary])
        rows = cursor.fetchall()
    if not rows:
        return 0
    for entitlement_id, feature_id, usage, grant_usage, included, cap, started in rows:
        if cap <= 0:
            continue
        # Open holds' plan part is in usage but is no usage of the period that ended.
        usage -= held_by_plan(entitlement_id, _aware(started))
        # The plan's grant used in the period that ended: what was tracked before the new
        # period began (rollovers, as the lazy reset makes them, same key). Only features
        # with rollovers pay this query.
        totals = UsageEvent.objects.filter(
            customer=customer, feature_id=feature_id, created_at__gte=period_start
        ).aggregate(total=Sum("amount"), from_grants=Sum("from_grants"))
        after = (totals["total"] or 0) - (totals["from_grants"] or 0)
        unused = included - ((usage - grant_usage) - after)
        unit, interval_count = _reset_unit(ResetPeriod.BILLING, customer)
        roll_over_at_boundary(entitlement_id, period_start, unused, unit, interval_count)
    ids = [row[0] for row in rows]
    end = customer.current_period_end
    params = [boundary, boundary, boundary, adapt(end), adapt(timezone.now()), *ids]
    with connection.cursor() as cursor:
        cursor.execute(_recount_sql(len(ids)), params)
        return int(cursor.rowcount)


@lru_cache(maxsize=1)
def _lock_due_sql() -> str:
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return (
        f"SELECT id, feature_id, {_quote('usage')}, grant_usage, included, rollover_max, "
        "period_start "
        f"FROM {_quote(Entitlement._meta.db_table)} WHERE customer_id = %s "
        "AND reset_period = %s AND (period_start IS NULL OR period_start < %s) "
        f"ORDER BY id{lock}"
    )


@lru_cache(maxsize=16)
def _recount_sql(count: int) -> str:
    entitlement = _quote(Entitlement._meta.db_table)
    return (
        f"UPDATE {entitlement} SET ({_quote('usage')}, grant_usage) = ("
        "SELECT COALESCE(SUM(u.amount), 0), COALESCE(SUM(u.from_grants), 0) "
        f"FROM {_quote(UsageEvent._meta.db_table)} u "
        f"WHERE u.customer_id = {entitlement}.customer_id "
        f"AND u.feature_id = {entitlement}.feature_id AND u.created_at >= %s), "
        "period_start = %s, reset_anchor = %s, next_reset_at = %s, updated_at = %s "
        f"WHERE id IN ({', '.join(['%s'] * count)})"
    )


def reanchor_entitlements(customer: BillingCustomer, *, now: datetime | None = None) -> int:
    """Anchor resets at the customer's current subscription period (else its creation).

    Called when the subscription period changes. A reset already due under the old
    anchor happens first; then the current period runs until the next boundary of
    the new anchor. ``period_start`` and usage are kept, so subscribing mid-period
    keeps usage (SPEC: upgrade 100 -> 1000 with 80 used leaves 920) and the ledger
    invariant holds. Must run inside a transaction. Returns how many rows changed.
    """
    now = now or timezone.now()
    rows = (
        Entitlement.objects.filter(customer=customer)
        .exclude(reset_period=ResetPeriod.NONE)
        .order_by("pk")
        .select_for_update()
    )
    changed = 0
    for entitlement in rows:
        if entitlement.next_reset_at is not None and now >= entitlement.next_reset_at:
            reset_if_due(_reload(entitlement.pk), now)
            entitlement.refresh_from_db()
        anchor, start, end = current_period(entitlement.reset_period, customer, now)
        if (anchor, end) == (entitlement.reset_anchor, entitlement.next_reset_at):
            continue
        changed += Entitlement.objects.filter(pk=entitlement.pk).update(
            reset_anchor=anchor,
            period_start=entitlement.period_start or start,
            next_reset_at=end,
            updated_at=now,
        )
    return changed
