"""Expiry, exact without a cron.

A grant whose ``expires_at`` is at or before a track's moment is simply never drawn
from (:mod:`.draw`). Its unconsumed remainder is *recorded* as ``expired`` lazily: by the
next draw, by the next read that sees ``grant_next_expiry`` passed (:func:`current`),
or set-based by ``kernia_reconcile --expire``; each under the entitlement's lock, so
exactly once.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ...models import Entitlement, Grant
from ..entitlements.resets import reset_if_due
from ..entitlements.rows import EntitlementRow, _reload
from ..locking import atomic_with_retry
from .totals import REMAINING, lock_entitlement, refresh_totals


def expire_due(entitlement_id: int, now: datetime) -> EntitlementRow:
    """Record the remainder of every grant expired by ``now``; return the fresh row."""

    def work() -> EntitlementRow:
        row = lock_entitlement(entitlement_id)
        if not row.expiry_due(now):
            return row
        due = (
            Grant.objects.filter(customer_id=row.customer_id, feature_id=row.feature_id)
            .annotate(left=REMAINING)
            .filter(left__gt=0, expires_at__lte=now)
            .order_by("pk")
            .select_for_update()
        )
        ids = list(due.values_list("pk", flat=True))
        if ids:
            Grant.objects.filter(pk__in=ids).update(
                expired=F("amount") - F("consumed") - F("revoked")
            )
        refresh_totals(row.id, row.customer_id, row.feature_id)
        return _reload(row.id)

    return atomic_with_retry(work)


def current(row: EntitlementRow, now: datetime) -> EntitlementRow:
    """The row with a due reset applied and due expiries recorded: its balance is exact."""
    row = reset_if_due(row, now)
    if row.expiry_due(now):
        row = expire_due(row.id, now)
    return row


def expire_all(now: datetime | None = None) -> int:
    """Set-based: record every due expiry (``kernia_reconcile --expire``). Returns rows."""
    now = now or timezone.now()
    ids = Entitlement.objects.filter(grant_next_expiry__lte=now).values_list("pk", flat=True)
    count = 0
    for entitlement_id in list(ids):
        with transaction.atomic():
            expire_due(entitlement_id, now)
        count += 1
    return count
