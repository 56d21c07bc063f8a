"""Reset periods: the current period of an entitlement, and resets that happen exactly once."""

from __future__ import annotations

from datetime import datetime

from django.db.models import OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
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
from .rows import EntitlementRow, _reload

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


def reset_if_due(entitlement: EntitlementRow, now: datetime) -> EntitlementRow:
    """Apply a reset that fell due, exactly once under concurrency; return fresh state."""
    if entitlement.next_reset_at is None or now < entitlement.next_reset_at:
        return entitlement
    if entitlement.reset_period == ResetPeriod.BILLING:
        unit = entitlement.billing_interval or "month"
        count = entitlement.billing_interval_count or 1
    else:
        unit, count = entitlement.reset_period, 1
    if entitlement.rollover_max > 0:
        return reset_with_rollover(entitlement, now, unit, count)
    start, end = period_containing(entitlement.reset_anchor_or_default, unit, now, count)
    # Only the first of any number of concurrent resets matches the old boundary.
    Entitlement.objects.filter(pk=entitlement.id, next_reset_at=entitlement.next_reset_at).update(
        usage=0, grant_usage=0, period_start=start, next_reset_at=end, updated_at=timezone.now()
    )
    return _reload(entitlement.id)


def reset_for_new_period(customer: BillingCustomer, period_start: datetime) -> int:
    """A new Stripe billing period began: reset ``billing`` entitlements once.

    Usage is recomputed from the ledger since ``period_start`` rather than set to
    zero, so usage tracked after the boundary but before the webhook arrived
    stays counted in the new period. The rows are locked before the ledger is
    summed, so a track committing meanwhile is counted, not overwritten. Must run
    inside a transaction. Returns how many entitlements reset.
    """
    due = (
        Entitlement.objects.filter(customer=customer, reset_period=ResetPeriod.BILLING)
        .filter(Q(period_start__isnull=True) | Q(period_start__lt=period_start))
        .order_by("pk")
        .select_for_update()
    )
    columns = ("pk", "feature_id", "usage", "grant_usage", "included", "rollover_max")
    rows = list(due.values_list(*columns, "period_start"))
    if not rows:
        return 0
    for entitlement_id, feature_id, usage, grant_usage, included, cap, started in rows:
        if cap <= 0:
            continue
        # Open holds' plan part is in usage but is no usage of the period that ended.
        usage -= held_by_plan(entitlement_id, started)
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
    # One UPDATE for all of them (set-based: the cost does not grow with the features),
    # each summing its own events since the boundary on the customer + feature + time index.
    since = UsageEvent.objects.filter(
        customer_id=OuterRef("customer_id"),
        feature_id=OuterRef("feature_id"),
        created_at__gte=period_start,
    ).order_by()

    def total(column: str) -> Coalesce:
        summed = since.values("customer_id").annotate(total=Sum(column)).values("total")
        return Coalesce(Subquery(summed), Value(0))

    return Entitlement.objects.filter(pk__in=[row[0] for row in rows]).update(
        usage=total("amount"),
        grant_usage=total("from_grants"),
        period_start=period_start,
        reset_anchor=period_start,
        next_reset_at=customer.current_period_end,
        updated_at=timezone.now(),
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
