"""Retention: move ledger rows older than N closed periods to the archive table.

For each entitlement that resets, the cutoff is the start of the period ``keep_periods``
periods before the current one, rounded down to a UTC midnight (so every archived day is
archived whole, and ``daily=true`` bounds inside a day still find all of that day's
events). Events before it move, with their ids, to
:class:`~kernia_billing.models.ArchivedUsageEvent`; entitlements that never reset keep
every event (their usage is the sum of all of them).

Nothing the audit reads is lost: usage is the sum of events since the period start
(never archived); rollups keep the archived days visible in history and are not
touched; the grants audit reads draws from both tables. Events are immutable and
writers only insert events inside the current period, so no lock is needed: each batch
of entitlements is one transaction of four set-based statements (count, copy, unlink
overage reports, delete), and an interrupted run simply resumes. An idempotency key older than
the cutoff is forgotten (a replay that late is recorded as new). The ledger row of a
usage correction stays in the ledger (the correction points at it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db import connection, transaction

from ...models import ArchivedUsageEvent, OverageReport, UsageCorrection, UsageEvent
from ...models.catalog import ResetPeriod
from ...periods import period_containing
from ..entitlements.rows import EntitlementRow, _select_many
from ..usage.ledger import EVENT_COLUMNS

COLUMNS = ("id", *EVENT_COLUMNS)  # the archive keeps the ledger row as it was


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    entitlements: int
    events: int


def cutoff(row: EntitlementRow, keep_periods: int) -> datetime | None:
    """Events before this moment are older than ``keep_periods`` closed periods."""
    if row.period_start is None or row.next_reset_at is None:
        return None
    if row.reset_period == ResetPeriod.BILLING:
        unit, count = row.billing_interval or "month", row.billing_interval_count or 1
    else:
        unit, count = row.reset_period, 1
    start, length = row.period_start, row.next_reset_at - row.period_start
    for _ in range(keep_periods):
        previous, _end = period_containing(
            row.reset_anchor_or_default, unit, start - timedelta(microseconds=1), count
        )
        # Before the anchor the series has no earlier period: step back by a length.
        start = previous if previous < start else start - length
    day = start.astimezone(UTC).date()
    return datetime.combine(day, time.min, tzinfo=UTC)


def archive_usage(
    keep_periods: int,
    *,
    batch_size: int = 200,
    dry_run: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> ArchiveSummary:
    """Archive events older than ``keep_periods`` closed periods; see the module doc."""
    if keep_periods < 0:
        raise ValueError("keep_periods must be >= 0")
    quote = connection.ops.quote_name
    events = quote(UsageEvent._meta.db_table)
    archive = quote(ArchivedUsageEvent._meta.db_table)
    reports = quote(OverageReport._meta.db_table)
    # A usage correction's own ledger row stays: the correction points at it (PROTECT).
    uncorrected = (
        f"AND NOT EXISTS (SELECT 1 FROM {quote(UsageCorrection._meta.db_table)} k "
        "WHERE k.usage_event_id = u.id)"
    )
    columns = ", ".join(quote(c) for c in COLUMNS)
    source = ", ".join(f"u.{quote(c)}" for c in COLUMNS)
    after, done, moved = 0, 0, 0
    while True:
        rows = _select_many("e.id > %s ORDER BY e.id LIMIT %s", [after, batch_size])
        if not rows:
            break
        cutoffs = [(r.customer_id, r.feature_id, cutoff(r, keep_periods)) for r in rows]
        wanted = [(c, f, at) for c, f, at in cutoffs if at is not None]
        if wanted:
            values = ", ".join(["(%s, %s, %s)"] * len(wanted))
            params: list[Any] = []
            for customer_id, feature_id, at in wanted:
                params += [customer_id, feature_id, connection.ops.adapt_datetimefield_value(at)]
            cte = f"WITH c(customer_id, feature_id, cutoff) AS (VALUES {values}) "
            old = (
                f"SELECT u.id FROM c JOIN {events} u ON u.customer_id = c.customer_id "
                f"AND u.feature_id = c.feature_id AND u.created_at < c.cutoff {uncorrected}"
            )
            with transaction.atomic(), connection.cursor() as cursor:
                # Counted first: drivers differ on the row count of a statement with a CTE.
                cursor.execute(f"{cte}SELECT COUNT(*) FROM ({old}) o", params)
                moved += int(cursor.fetchone()[0])
                if not dry_run:
                    cursor.execute(
                        f"{cte}INSERT INTO {archive} ({columns}) SELECT {source} FROM c "
                        f"JOIN {events} u ON u.customer_id = c.customer_id "
                        f"AND u.feature_id = c.feature_id AND u.created_at < c.cutoff "
                        f"{uncorrected}",
                        params,
                    )
                    # Sent overage keeps its report; the link to the moved event goes.
                    cursor.execute(
                        f"{cte}UPDATE {reports} SET usage_event_id = NULL "
                        f"WHERE usage_event_id IN ({old})",
                        params,
                    )
                    cursor.execute(f"{cte}DELETE FROM {events} WHERE id IN ({old})", params)
        after, done = rows[-1].id, done + len(rows)
        if progress is not None:
            progress(done, after, moved)
    return ArchiveSummary(entitlements=done, events=moved)
