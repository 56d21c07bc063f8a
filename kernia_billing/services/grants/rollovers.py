"""Rollovers: at a reset, the unused part of the plan's grant becomes a rollover grant.

Plan feature settings: ``rolloverMax`` (the cap on rolled-over balance alive at a
boundary; 0 = off) and ``rolloverExpiresAfter`` (periods: a rollover made at boundary
``b_i`` is spendable until ``b_{i+N}``). Several periods stack and are drawn FIFO (the
soonest-expiring first, as every grant). A lazy reset that crosses several boundaries
at once rolls over each period in turn (the idle ones unused in full), so the result is
the same as if every boundary had been crossed on time; rollovers already expired by
then are not created.

The reset and its rollovers happen in one transaction under the entitlement's lock,
exactly once: only the writer that still sees the old boundary resets.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from ...models import Entitlement, Grant, GrantSource
from ...periods import period_containing
from ..entitlements.rows import EntitlementRow, _reload
from ..reservations.giveback import held_by_plan
from .draw import lock_grants
from .totals import lock_entitlement, refresh_totals


def reset_with_rollover(
    row: EntitlementRow, now: datetime, unit: str, count: int
) -> EntitlementRow:
    """Apply the due reset of ``row`` and create its rollover grants (in a transaction)."""
    with transaction.atomic():
        fresh = lock_entitlement(row.id)
        if fresh.next_reset_at != row.next_reset_at or fresh.next_reset_at is None:
            return _reload(row.id)  # another writer reset it first
        anchor = fresh.reset_anchor_or_default
        cap, lifetime = fresh.rollover_max, fresh.rollover_expires_after
        existing = [
            (g.remaining, g.expires_at)
            for g in lock_grants(fresh.customer_id, fresh.feature_id)
            if g.id in _rollover_ids(fresh)
        ]
        boundary = fresh.next_reset_at
        # Open holds' plan part is in usage but was never used in this period (a confirm
        # deducts it in the next): it rolls over as unused.
        unused = max(0, fresh.plan_remaining + held_by_plan(fresh.id, fresh.period_start))
        created: list[tuple[int, datetime, datetime]] = []
        while boundary <= now:
            expires = boundary
            for _ in range(lifetime):
                expires = period_containing(anchor, unit, expires, count)[1]
            alive = sum(n for n, at in existing if at is not None and at > boundary)
            alive += sum(n for n, at, _ in created if at > boundary)
            amount = min(unused, max(0, cap - alive))
            if amount:
                created.append((amount, expires, boundary))
            unused = fresh.included  # a period nobody used: its grant is unused in full
            boundary = period_containing(anchor, unit, boundary, count)[1]
        start, end = period_containing(anchor, unit, now, count)
        Entitlement.objects.filter(pk=fresh.id).update(
            usage=0, grant_usage=0, period_start=start, next_reset_at=end, updated_at=timezone.now()
        )
        for amount, expires, made_at in created:
            if expires <= now:
                continue
            try:
                with transaction.atomic():
                    Grant.objects.create(
                        customer_id=fresh.customer_id,
                        feature_id=fresh.feature_id,
                        source=GrantSource.ROLLOVER,
                        amount=amount,
                        expires_at=expires,
                        reason="Unused at the end of the period",
                        idempotency_key=f"rollover:{fresh.id}:{made_at.isoformat()}",
                        created_at=made_at,
                    )
            except IntegrityError:
                continue  # already rolled over (a reset replayed after a restore)
        refresh_totals(fresh.id, fresh.customer_id, fresh.feature_id)
    return _reload(row.id)


def roll_over_at_boundary(
    entitlement_id: int, boundary: datetime, unused: int, unit: str, count: int
) -> Grant | None:
    """The webhook's reset (a new Stripe billing period began at ``boundary``): roll over.

    ``unused`` is what the ended period left of the plan's grant. Same cap, lifetime and
    idempotency key as the lazy reset, so whichever path crosses a boundary first makes
    the rollover and the other finds it. The caller holds the entitlement's lock.
    """
    fresh = lock_entitlement(entitlement_id)
    cap, lifetime = fresh.rollover_max, fresh.rollover_expires_after
    if cap <= 0 or unused <= 0:
        return None
    rollover_ids = _rollover_ids(fresh)
    alive = sum(
        g.remaining
        for g in lock_grants(fresh.customer_id, fresh.feature_id)
        if g.id in rollover_ids and g.expires_at is not None and g.expires_at > boundary
    )
    amount = min(unused, max(0, cap - alive))
    expires = boundary
    for _ in range(lifetime):
        expires = period_containing(boundary, unit, expires, count)[1]
    if not amount or expires <= timezone.now():
        return None
    key = f"rollover:{fresh.id}:{boundary.isoformat()}"
    if Grant.objects.filter(customer_id=fresh.customer_id, idempotency_key=key).exists():
        return None
    try:
        with transaction.atomic():
            made = Grant.objects.create(
                customer_id=fresh.customer_id,
                feature_id=fresh.feature_id,
                source=GrantSource.ROLLOVER,
                amount=amount,
                expires_at=expires,
                reason="Unused at the end of the period",
                idempotency_key=key,
                created_at=min(boundary, timezone.now()),
            )
    except IntegrityError:
        return None
    refresh_totals(fresh.id, fresh.customer_id, fresh.feature_id)
    return made


def _rollover_ids(row: EntitlementRow) -> set[int]:
    return set(
        Grant.objects.filter(
            customer_id=row.customer_id, feature_id=row.feature_id, source=GrantSource.ROLLOVER
        ).values_list("pk", flat=True)
    )
