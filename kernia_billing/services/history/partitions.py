"""PostgreSQL only: the ledger partitioned by month of ``created_at``, opt-in.

Django does not create partitioned tables, so nothing in the app's migrations does this:
``kernia_partition_ledger`` (this module's door) converts the ledger once, in one
transaction, and then keeps partitions ahead of the clock. What the conversion does:

- The ledger becomes ``PARTITION BY RANGE (created_at)`` with one partition per UTC
  month, from the oldest row's month to ``months_ahead`` months after the current one
  (or the newest row's month, if later).
  Columns, defaults, the identity sequence (same name, same next id), the outgoing
  foreign keys and the model's indexes keep their names, so the app's later migrations
  of the ledger (added columns, indexes) still apply. The primary key becomes
  ``(id, created_at)``: a partitioned table's unique keys must hold the partition key.
- Foreign keys *to* the ledger (overage reports, corrections, reservations) are
  dropped, because one to a partitioned table must name its whole primary key. The
  columns, their indexes and the app's ``on_delete`` (applied by Django) stay.
- Idempotency stays exact across months: PostgreSQL enforces a unique index only within
  one partition, so the key's uniqueness moves to a small table of (customer, key)
  that a trigger fills as each keyed row is inserted (a second first use of a key blocks
  on it and fails as a unique violation, which ``track`` and ``track_batch`` already
  answer as a replay). Deleting ledger rows (retention, a customer's deletion) forgets
  their keys through another trigger; TRUNCATE empties it. An unpartitioned ledger has
  neither table nor trigger, so nothing there costs more.

Retention can then detach whole months (:func:`detach_partitions`) instead of moving rows
one by one: a month is detached only when the audit no longer reads any row of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.db import connection, transaction
from django.utils import timezone

from ...models import (
    ArchivedUsageEvent,
    Entitlement,
    OverageReport,
    Reservation,
    UsageCorrection,
    UsageEvent,
)
from ..usage.rollups import _first_day_sql
from .archive import COLUMNS as ARCHIVE_COLUMNS

#: Months of partitions kept ahead of the current one by default.
MONTHS_AHEAD = 3


class PartitioningError(Exception):
    """The ledger cannot be partitioned (or a month detached) as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start: datetime  # inclusive, a UTC month start
    end: datetime  # exclusive


@dataclass(frozen=True, slots=True)
class Detached:
    name: str
    events: int  # rows left in the detached table
    archived: int  # rows with grant draws copied to the archive first (the grants audit)


def ledger_table() -> str:
    return UsageEvent._meta.db_table


def keys_table() -> str:
    return f"{ledger_table()}_key"


def _require_postgresql() -> None:
    if connection.vendor != "postgresql":
        raise PartitioningError(
            f"Partitioning the ledger needs PostgreSQL; this database is {connection.vendor}."
        )


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


# --- months --------------------------------------------------------------------------------


def month_start(moment: datetime | date) -> datetime:
    day = moment.astimezone(UTC).date() if isinstance(moment, datetime) else moment
    return datetime(day.year, day.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"{ledger_table()}_{start:%Y_%m}"


def months_between(first: datetime, last: datetime) -> list[datetime]:
    """Month starts from ``first``'s month through ``last``'s, inclusive."""
    months, month = [], month_start(first)
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


def _create_partition_sql(start: datetime) -> str:
    end = add_months(start, 1)
    return (
        f"CREATE TABLE {_quote(partition_name(start))} PARTITION OF {_quote(ledger_table())} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


# --- what the database holds ---------------------------------------------------------------


def is_partitioned() -> bool:
    _require_postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.oid = to_regclass(%s)",
            [_quote(ledger_table())],
        )
        return cursor.fetchone() is not None


def is_missing_partition(error: BaseException) -> bool:
    """A write dated where the partitioned ledger has no partition (the job that creates
    them ahead, ``--create-partitions``, has not run): PostgreSQL's check violation."""
    cause = error.__cause__
    return getattr(cause, "sqlstate", None) == "23514" and "no partition of relation" in str(cause)


_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def partitions() -> list[Partition]:
    """The ledger's partitions, oldest first (empty when it is not partitioned)."""
    _require_postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [_quote(ledger_table())],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match is None:
            continue  # a DEFAULT partition someone added by hand: not a month
        start, end = (datetime.fromisoformat(value) for value in match.groups())
        found.append(Partition(name, start.astimezone(UTC), end.astimezone(UTC)))
    return sorted(found, key=lambda p: p.start)


# --- the conversion ------------------------------------------------------------------------


def conversion_sql(*, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None) -> list[str]:
    """The statements that partition the unpartitioned ledger, as of the data now.

    They run in one transaction (:func:`partition_ledger`), the first statement locking
    the ledger; ``kernia_partition_ledger --print-sql`` prints them for a DBA.
    """
    _require_postgresql()
    if months_ahead < 0:
        raise PartitioningError("months_ahead must be 0 or more.")
    if is_partitioned():
        raise PartitioningError("The ledger is already partitioned.")
    ledger, old, keys = ledger_table(), f"{ledger_table()}_unpartitioned", keys_table()
    q = _quote
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
            [q(ledger)],
        )
        outgoing = cursor.fetchall()
        cursor.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE confrelid = to_regclass(%s) AND contype = 'f' ORDER BY 1, 2",
            [q(ledger)],
        )
        incoming = cursor.fetchall()
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [q(ledger)])
        sequence = cursor.fetchone()[0]
        cursor.execute(f"SELECT MIN(created_at), MAX(created_at) FROM {q(ledger)}")
        oldest, newest = cursor.fetchone()
    if sequence is None:
        raise PartitioningError(f"{ledger}.id has no sequence: is this the app's ledger?")
    # The sequence keeps its name (what Django's sequence resets look up); the old one
    # is renamed out of the way and gives its position to the new one.
    sequence_name = sequence.split(".")[-1].strip('"')
    old_sequence = f"{old}_id_seq"
    moment = now or timezone.now()
    first = month_start(oldest or moment)
    last = max(add_months(month_start(moment), months_ahead), month_start(newest or moment))

    statements = [
        f"LOCK TABLE {q(ledger)} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {q(ledger)} RENAME TO {q(old)}",
        f"ALTER SEQUENCE {sequence} RENAME TO {q(old_sequence)}",
        f"CREATE TABLE {q(ledger)} (LIKE {q(old)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMMENTS EXCLUDING IDENTITY) PARTITION BY RANGE (created_at)",
        *(_create_partition_sql(month) for month in months_between(first, last)),
        # Copied before the indexes exist: one index build per partition, not a row at a time.
        f"INSERT INTO {q(ledger)} SELECT * FROM {q(old)}",
        f"ALTER TABLE {q(ledger)} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
        f"(SEQUENCE NAME {q(sequence_name)})",
        f"SELECT setval('{q(sequence_name)}', last_value, is_called) FROM {q(old_sequence)}",
        *(f"ALTER TABLE {table} DROP CONSTRAINT {q(name)}" for table, name in incoming),
        f"DROP TABLE {q(old)}",
        f"ALTER TABLE {q(ledger)} ADD CONSTRAINT {q(ledger + '_pkey')} "
        "PRIMARY KEY (id, created_at)",
        *_model_index_sql(),
        *(f"ALTER TABLE {q(ledger)} ADD CONSTRAINT {q(name)} {sql}" for name, sql in outgoing),
        *_keys_sql(ledger, keys),
        # New tables have no statistics, and autovacuum never analyzes a partitioned parent.
        f"ANALYZE {q(ledger)}",
        f"ANALYZE {q(keys)}",
    ]
    return statements


def _model_index_sql() -> list[str]:
    """The model's indexes by their names; its unique key index without UNIQUE (see below)."""
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        indexes = UsageEvent._meta.indexes
        statements = [str(index.create_sql(UsageEvent, editor)) for index in indexes]
        # The model's partial unique index over the key's digest serves track's replay
        # lookup (``ledger.keyed_events``) in each partition; uniqueness itself is the
        # keys table's (a partitioned table refuses a unique index without created_at).
        (unique_key,) = UsageEvent._meta.constraints
        unique_sql = str(unique_key.create_sql(UsageEvent, editor))
    if not unique_sql.startswith("CREATE UNIQUE INDEX "):
        raise PartitioningError(f"Unexpected idempotency index: {unique_sql}")
    statements.append("CREATE INDEX " + unique_sql.removeprefix("CREATE UNIQUE INDEX "))
    return statements


def _keys_sql(ledger: str, keys: str) -> list[str]:
    q = _quote
    claim, forget, empty = f"{keys}_claim", f"{keys}_forget", f"{keys}_empty"
    return [
        f"CREATE TABLE {q(keys)} (customer_id bigint NOT NULL, "
        "idempotency_key varchar(255) NOT NULL, PRIMARY KEY (customer_id, idempotency_key))",
        f"INSERT INTO {q(keys)} SELECT customer_id, idempotency_key FROM {q(ledger)} "
        "WHERE idempotency_key IS NOT NULL",
        f"CREATE FUNCTION {q(claim)}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {q(keys)} (customer_id, idempotency_key) "
        "VALUES (NEW.customer_id, NEW.idempotency_key); RETURN NEW; END $$",
        f"CREATE FUNCTION {q(forget)}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"DELETE FROM {q(keys)} WHERE customer_id = OLD.customer_id "
        "AND idempotency_key = OLD.idempotency_key; RETURN NULL; END $$",
        f"CREATE FUNCTION {q(empty)}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"TRUNCATE {q(keys)}; RETURN NULL; END $$",
        f"CREATE TRIGGER {q(claim)} BEFORE INSERT ON {q(ledger)} FOR EACH ROW "
        f"WHEN (NEW.idempotency_key IS NOT NULL) EXECUTE FUNCTION {q(claim)}()",
        f"CREATE TRIGGER {q(forget)} AFTER DELETE ON {q(ledger)} FOR EACH ROW "
        f"WHEN (OLD.idempotency_key IS NOT NULL) EXECUTE FUNCTION {q(forget)}()",
        f"CREATE TRIGGER {q(empty)} AFTER TRUNCATE ON {q(ledger)} FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {q(empty)}()",
    ]


@dataclass(frozen=True, slots=True)
class PartitionSummary:
    converted: bool  # False: the ledger was partitioned already
    created: list[Partition]


def partition_ledger(
    *, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None
) -> PartitionSummary:
    """Partition the ledger (one transaction) or, if it is already, only create partitions
    ahead: safe to run again."""
    _require_postgresql()
    with transaction.atomic():
        if is_partitioned():
            return PartitionSummary(False, create_partitions(months_ahead=months_ahead, now=now))
        with connection.cursor() as cursor:
            # Locked before the catalog is read, so the statements match the data.
            cursor.execute(f"LOCK TABLE {_quote(ledger_table())} IN ACCESS EXCLUSIVE MODE")
            for statement in conversion_sql(months_ahead=months_ahead, now=now):
                cursor.execute(statement)
    return PartitionSummary(True, partitions())


def create_partitions(
    *, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None
) -> list[Partition]:
    """The monthly job: create the missing partitions from the current month to
    ``months_ahead`` months ahead; returns those it created (none on a rerun)."""
    _require_postgresql()
    if months_ahead < 0:
        raise PartitioningError("months_ahead must be 0 or more.")
    if not is_partitioned():
        raise PartitioningError("The ledger is not partitioned: run --apply first.")
    current = month_start(now or timezone.now())
    wanted = months_between(current, add_months(current, months_ahead))
    have = {p.start for p in partitions()}
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        for month in wanted:
            if month in have:
                continue
            cursor.execute(_create_partition_sql(month))
            created.append(Partition(partition_name(month), month, add_months(month, 1)))
    return created


def create_partitions_sql(
    *, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None
) -> list[str]:
    """What :func:`create_partitions` would run now."""
    current = month_start(now or timezone.now())
    have = {p.start for p in partitions()}
    wanted = months_between(current, add_months(current, months_ahead))
    return [_create_partition_sql(month) for month in wanted if month not in have]


# --- retention by detaching months ---------------------------------------------------------


def detach_partitions(before: date, *, dry_run: bool = False) -> list[Detached]:
    """Detach every partition that ends on or before ``before`` (a month start).

    A month is detached only when the audit reads none of its rows any more: none is in
    its entitlement's current period (from that period's first UTC day, as the rollups'
    audit reads it) or belongs to an entitlement that never resets, and no usage
    correction points at one. Rows with grant draws are copied to the archive table first
    (the grants audit reads every draw); links from overage reports and reservations are
    cleared as ``on_delete=SET_NULL`` would; the keys of the month are forgotten. One
    transaction: a month that cannot go keeps every month attached. A detached table
    stays in the database under its name: dump it, then ``DROP TABLE`` it, as your
    retention requires.
    """
    _require_postgresql()
    if not is_partitioned():
        raise PartitioningError("The ledger is not partitioned.")
    bound = month_start(before)
    with transaction.atomic(), connection.cursor() as cursor:  # a month refused detaches none
        # Dropping a detached month's foreign keys alters the tables they reference, which
        # PostgreSQL refuses while deferred checks are pending: check them as we go.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        return [_detach(p, dry_run=dry_run) for p in partitions() if p.end <= bound]


def _detach(partition: Partition, *, dry_run: bool) -> Detached:
    q = _quote
    table = q(partition.name)
    entitlements = q(Entitlement._meta.db_table)
    corrections = q(UsageCorrection._meta.db_table)
    drew = "(u.from_grants > 0 OR u.draws IS NOT NULL)"
    with connection.cursor() as cursor:
        # Writers insert at "now", never into a past month; the lock keeps a late
        # explicit-clock track out while the month is checked and detached.
        cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
        cursor.execute(
            f"SELECT COUNT(*) FROM {table} u JOIN {entitlements} e "
            "ON e.customer_id = u.customer_id AND e.feature_id = u.feature_id "
            f"WHERE u.created_at >= {_first_day_sql('e.period_start')}"
        )
        counted = int(cursor.fetchone()[0])
        cursor.execute(
            f"SELECT COUNT(*) FROM {corrections} c JOIN {table} u ON u.id = c.usage_event_id"
        )
        corrected = int(cursor.fetchone()[0])
        if counted or corrected:
            raise PartitioningError(
                f"{partition.name} still holds {counted} event(s) the ledger audit counts "
                f"(the current period of their entitlement, or one that never resets) and "
                f"{corrected} event(s) a usage correction points at; it stays attached."
            )
        cursor.execute(f"SELECT COUNT(*), COUNT(*) FILTER (WHERE {drew}) FROM {table} u")
        events, with_draws = (int(v) for v in cursor.fetchone())
        if dry_run:
            return Detached(partition.name, events, with_draws)
        columns = ", ".join(q(c) for c in ARCHIVE_COLUMNS)
        source = ", ".join(f"u.{q(c)}" for c in ARCHIVE_COLUMNS)
        cursor.execute(
            f"INSERT INTO {q(ArchivedUsageEvent._meta.db_table)} ({columns}) "
            f"SELECT {source} FROM {table} u WHERE {drew} ON CONFLICT (id) DO NOTHING"
        )
        for model, column in ((OverageReport, "usage_event_id"), (Reservation, "event_id")):
            cursor.execute(
                f"UPDATE {q(model._meta.db_table)} SET {column} = NULL "
                f"WHERE {column} IN (SELECT id FROM {table})"
            )
        cursor.execute(
            f"DELETE FROM {q(keys_table())} k USING {table} u "
            "WHERE k.customer_id = u.customer_id AND k.idempotency_key = u.idempotency_key"
        )
        cursor.execute(f"ALTER TABLE {q(ledger_table())} DETACH PARTITION {table}")
        # A detached month keeps the ledger's foreign keys, which would stop a customer's
        # deletion until it is dropped: it is an export now, not a ledger.
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'f'",
            [table],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {q(name)}")
    return Detached(partition.name, events, with_draws)
