"""Daily usage rollups, written in the ledger row's own transaction.

:func:`record_rollup` (one event) and :func:`record_rollups` (many) are THE helpers
every ledger writer calls right after it inserts ledger rows, inside the same
transaction: ``track``, ``track_batch`` and any future writer of ``UsageEvent`` rows
(corrections, imports, ...). One ``INSERT ... ON CONFLICT DO UPDATE`` per call adds the
amounts to the (customer, feature, UTC day) rows, so a rollup commits or rolls back with
its events and always equals the ledger (``kernia_reconcile`` checks that).

Lock order: a rollup row is step 4 (after the entitlement the writer already holds),
and only writers holding the entitlement of (customer, feature) touch its rollup rows,
so the upsert adds no contention and no deadlock. Many rows are upserted in
(customer, feature, day) order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any, Protocol

from django.db import connection

from ...models import ArchivedUsageEvent, Entitlement, UsageEvent, UsageRollup


class LedgerFacts(Protocol):
    """What a rollup needs of a ledger row (a ``UsageEvent`` or a batch's new row)."""

    @property
    def customer_id(self) -> int: ...
    @property
    def feature_id(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def amount(self) -> int: ...


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def upsert_sql(rows: int) -> str:
    """The rollup upsert of ``rows`` (customer, feature, day, amount, events) tuples."""
    return upsert_from_sql("VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * rows))


def upsert_from_sql(source: str) -> str:
    """The rollup upsert of the (customer, feature, day, amount, events) rows of ``source``
    (a ``VALUES`` list, or a ``SELECT`` from a ledger insert's ``RETURNING``)."""
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    return (
        f"INSERT INTO {table} (customer_id, feature_id, {quote('day')}, amount, events) "
        f"{source} ON CONFLICT (customer_id, feature_id, {quote('day')}) "
        f"DO UPDATE SET amount = {table}.amount + excluded.amount, "
        f"events = {table}.events + excluded.events"
    )


def record_rollup(
    customer_id: int, feature_id: int, created_at: datetime, amount: int, events: int = 1
) -> None:
    """Add ``events`` ledger rows totalling ``amount`` to their day's rollup (one statement).

    Call it in the transaction that inserts the ledger row(s), after the insert.
    """
    day = connection.ops.adapt_datefield_value(utc_day(created_at))
    with connection.cursor() as cursor:
        cursor.execute(upsert_sql(1), [customer_id, feature_id, day, amount, events])


def record_rollups(events: Iterable[LedgerFacts]) -> None:
    """:func:`record_rollup` for many ledger rows: one upsert per 500 (customer, feature, day)."""
    for sql, params in rollup_upserts(events):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


def rollup_upserts(
    events: Iterable[LedgerFacts], *, chunk: int = 500, only_with: str | None = None
) -> list[tuple[str, list[Any]]]:
    """The statements of :func:`record_rollups`, for a writer that folds them into its own.

    A ledger writer may run them as part of the statement that inserts the events
    (PostgreSQL: a ``WITH ... AS (upsert)``), which is the same as calling
    :func:`record_rollups` right after its insert: same transaction, same rows.
    ``only_with`` (PostgreSQL): the name of a ``WITH`` query of that statement; the
    upserts apply only where it returns a row (as its events are inserted only then).
    """
    # By moment first (a batch's events share theirs): the day is worked out once per moment.
    by_moment: dict[tuple[int, int, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for event in events:
        total = by_moment[(event.customer_id, event.feature_id, event.created_at)]
        total[0] += event.amount
        total[1] += 1
    totals: dict[tuple[int, int, date], list[int]] = defaultdict(lambda: [0, 0])
    for (customer_id, feature_id, moment), (amount, count) in by_moment.items():
        total = totals[(customer_id, feature_id, utc_day(moment))]
        total[0] += amount
        total[1] += count
    keys = sorted(totals)
    statements = []
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        params: list[Any] = []
        for customer_id, feature_id, day in part:
            amount, count = totals[(customer_id, feature_id, day)]
            params += [customer_id, feature_id, connection.ops.adapt_datefield_value(day)]
            params += [amount, count]
        if only_with is None:
            statements.append((upsert_sql(len(part)), params))
        else:
            typed = ", ".join(
                ["(%s::bigint, %s::bigint, %s::date, %s::bigint, %s::bigint)"] * len(part)
            )
            source = f"SELECT * FROM (VALUES {typed}) AS v WHERE EXISTS (SELECT FROM {only_with})"
            statements.append((upsert_from_sql(source), params))
    return statements


# --- the audit: rollups equal the ledger -------------------------------------------------


def _day_sql(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"({column} AT TIME ZONE 'UTC')::date"
    return f"date({column})"  # SQLite stores UTC text


def _first_day_sql(column: str) -> str:
    """The UTC midnight that starts the day of ``column``; the beginning of time if null."""
    if connection.vendor == "postgresql":
        return f"COALESCE(date_trunc('day', {column}, 'UTC'), '-infinity'::timestamptz)"
    return f"COALESCE(date({column}), '')"


def _first_date_sql(column: str) -> str:
    """The UTC day of ``column``; before every day if null."""
    if connection.vendor == "postgresql":
        return f"COALESCE({_day_sql(column)}, '-infinity'::date)"
    return f"COALESCE({_day_sql(column)}, '')"


def audit_rollups(entitlement_ids: list[int]) -> list[tuple[int, int, date, Any, Any]]:
    """``(customer, feature, day, (amount, events) of the ledger, of the rollup)`` that differ.

    For the given entitlements, every UTC day from the day their current period started
    (all days for entitlements that never reset): the window the hot ledger holds
    whatever was archived. Two grouped statements on the customer + feature + time
    index and the rollups' unique index.
    """
    if not entitlement_ids:
        return []
    quote = connection.ops.quote_name
    entitlements = quote(Entitlement._meta.db_table)
    placeholders = ", ".join(["%s"] * len(entitlement_ids))
    ledger_sql = (
        f"SELECT u.customer_id, u.feature_id, {_day_sql('u.created_at')}, SUM(u.amount), "
        f"COUNT(*) FROM {entitlements} e JOIN {quote(UsageEvent._meta.db_table)} u "
        "ON u.customer_id = e.customer_id AND u.feature_id = e.feature_id "
        f"AND u.created_at >= {_first_day_sql('e.period_start')} "
        f"WHERE e.id IN ({placeholders}) GROUP BY 1, 2, 3"
    )
    rollup_sql = (
        f"SELECT r.customer_id, r.feature_id, r.{quote('day')}, r.amount, r.events "
        f"FROM {entitlements} e JOIN {quote(UsageRollup._meta.db_table)} r "
        "ON r.customer_id = e.customer_id AND r.feature_id = e.feature_id "
        f"AND r.{quote('day')} >= {_first_date_sql('e.period_start')} "
        f"WHERE e.id IN ({placeholders}) AND (r.amount <> 0 OR r.events <> 0)"
    )
    if connection.vendor == "postgresql":
        # LATERAL: one index range per entitlement, never a scan of the whole ledger or
        # of all rollups (a plain join of a batch was planned as one scan per batch: of
        # 9M rollups, 0.6 s a batch, at 10M events over ten years).
        rollup_sql = (
            f"SELECT e.customer_id, e.feature_id, r.{quote('day')}, r.amount, r.events "
            f"FROM {entitlements} e CROSS JOIN LATERAL (SELECT {quote('day')}, amount, events "
            f"FROM {quote(UsageRollup._meta.db_table)} x "
            "WHERE x.customer_id = e.customer_id AND x.feature_id = e.feature_id "
            f"AND x.{quote('day')} >= {_first_date_sql('e.period_start')} "
            # OFFSET 0 keeps the subquery a subquery: pulled up, it is the plain join again.
            f"AND (x.amount <> 0 OR x.events <> 0) OFFSET 0) r WHERE e.id IN ({placeholders})"
        )
        ledger_sql = (
            "SELECT e.customer_id, e.feature_id, x.day, x.amount, x.n "
            f"FROM {entitlements} e CROSS JOIN LATERAL ("
            f"SELECT {_day_sql('u.created_at')} AS day, SUM(u.amount) AS amount, "
            f"COUNT(*) AS n FROM {quote(UsageEvent._meta.db_table)} u "
            "WHERE u.customer_id = e.customer_id AND u.feature_id = e.feature_id "
            f"AND u.created_at >= {_first_day_sql('e.period_start')} GROUP BY 1) x "
            f"WHERE e.id IN ({placeholders})"
        )
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql, entitlement_ids)
        ledger = {(c, f, _as_date(d)): (int(a), int(n)) for c, f, d, a, n in cursor.fetchall()}
        cursor.execute(rollup_sql, entitlement_ids)
        rollups = {(c, f, _as_date(d)): (int(a), int(n)) for c, f, d, a, n in cursor.fetchall()}
    return [
        (key[0], key[1], key[2], ledger.get(key), rollups.get(key))
        for key in sorted(set(ledger) | set(rollups))
        if ledger.get(key) != rollups.get(key)
    ]


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def rebuild_rollups(customer_ids: list[int]) -> int:
    """Recompute these customers' rollups from the ledger and its archive (set-based).

    The repair for a rollup drift (``kernia_reconcile --fix``) and for tools that rewrite
    history. Their entitlements are locked first (step 2 of the lock order), so no
    writer adds to a rollup while it is rebuilt. Must run inside a transaction. Returns
    the number of rollup rows written.
    """
    if not customer_ids:
        return 0
    list(
        Entitlement.objects.filter(customer_id__in=customer_ids)
        .order_by("pk")
        .select_for_update()
        .values_list("pk", flat=True)
    )
    quote = connection.ops.quote_name
    rollups = quote(UsageRollup._meta.db_table)
    placeholders = ", ".join(["%s"] * len(customer_ids))
    sources = " UNION ALL ".join(
        f"SELECT customer_id, feature_id, created_at, amount FROM {quote(table)} "
        f"WHERE customer_id IN ({placeholders})"
        for table in (UsageEvent._meta.db_table, ArchivedUsageEvent._meta.db_table)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {rollups} WHERE customer_id IN ({placeholders})", customer_ids)
        cursor.execute(
            f"INSERT INTO {rollups} (customer_id, feature_id, {quote('day')}, amount, events) "
            f"SELECT customer_id, feature_id, {_day_sql('created_at')}, SUM(amount), COUNT(*) "
            f"FROM ({sources}) s GROUP BY customer_id, feature_id, {_day_sql('created_at')}",
            customer_ids * 2,
        )
        return int(cursor.rowcount)
