"""The renewal storm: every due reset of many customers, set-based, exactly once.

When thousands of customers cross a period boundary at once, each one's first check or
track pays its own reset (:func:`.resets.reset_if_due`). :func:`reset_due` does those
resets ahead, in batches: per batch one statement locks the due entitlements (ascending
id, step 2 of the lock order in :mod:`..locking`) and one ``UPDATE`` resets them all. It
applies the same rule as the lazy reset, a conditional ``UPDATE`` on the old boundary,
so a row that a track, a check or a renewal webhook reset first is left alone, and a
track after it sees the new period. Features with rollovers go through the lazy reset
one by one (they create grants). ``kernia_reset_due`` is the command-line door.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.utils import timezone

from ..locking import atomic_with_retry
from .resets import next_period, reset_if_due, reset_rows_params, reset_rows_sql
from .rows import EntitlementRow, _select_many

#: ``progress(entitlements reset so far, last entitlement id)``, after each batch.
Progress = Callable[[int, int], None]

#: Entitlements per batch: about 1,000 customers of three features.
BATCH_SIZE = 3000


def reset_due(
    *, now: datetime | None = None, batch_size: int = BATCH_SIZE, progress: Progress | None = None
) -> int:
    """Reset every entitlement whose reset is due at ``now``; returns how many it reset.

    One transaction per batch of ``batch_size`` entitlements, by ascending id, so it can
    run beside live traffic and be interrupted and run again (what it reset stays reset;
    what it did not is still due, here or lazily).
    """
    now = now or timezone.now()
    done, after = 0, 0
    while True:

        def work(after: int = after) -> tuple[list[EntitlementRow], int]:
            batch = _select_many(_due_where(), [_adapt(now), after, batch_size])
            return batch, (_reset_batch(batch, now) if batch else 0)

        # A deadlock victim (a writer outside the lock order) runs its batch again.
        batch, reset = atomic_with_retry(work)
        if not batch:
            break
        done += reset
        after = batch[-1].id
        if progress is not None:
            progress(done, after)
    # Rollovers create grants: the lazy reset's own path, one entitlement at a time.
    for row in _select_many("e.next_reset_at <= %s AND e.rollover_max > 0", [_adapt(now)]):
        if reset_if_due(row, now).next_reset_at != row.next_reset_at:
            done += 1
    return done


@lru_cache(maxsize=1)
def _due_where() -> str:
    # _select_sql's WHERE, with the batch's order, limit and lock (of the entitlement rows
    # only: the customer and feature rows are read, not written).
    lock = " FOR UPDATE OF e" if connection.features.has_select_for_update_of else ""
    return (
        f"e.next_reset_at <= %s AND e.id > %s AND e.rollover_max <= 0 ORDER BY e.id LIMIT %s{lock}"
    )


def _reset_batch(batch: list[EntitlementRow], now: datetime) -> int:
    rows = [(row.id, row.next_reset_at, *next_period(row, now)) for row in batch]
    with connection.cursor() as cursor:
        cursor.execute(reset_rows_sql(len(rows)), reset_rows_params(rows))
        return int(cursor.rowcount)


def _adapt(moment: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(moment)
