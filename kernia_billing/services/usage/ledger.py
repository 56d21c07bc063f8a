"""The ledger row of an accepted track: one ``INSERT ... RETURNING id``, its signals, its result."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

from django.db import connection, models, transaction
from django.db.models import QuerySet, Value

from ... import signals
from ...models import BillingCustomer, UsageEvent
from ...models.usage import IdempotencyDigest
from ...types import TrackResult
from ..metering.outbox import record_overage
from ..prepared import statement_cursor
from .rollups import record_rollup, record_rollups, rollup_upserts, upsert_sql, utc_day

# The ledger row's columns as written by every insert (the archive copies the same ones);
# event_params adapts them in this order.
EVENT_COLUMNS = (
    "customer_id",
    "feature_id",
    "amount",
    "idempotency_key",
    "request_fingerprint",
    "properties",
    "created_at",
    "balance_after",
    "usage_after",
    "from_grants",
    "draws",
    "used_feature_id",
    "units",
)


@lru_cache(maxsize=2)
def insert_event_sql() -> str:
    """``INSERT`` of one ledger row (``EVENT_COLUMNS``, then ``RETURNING id``)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in EVENT_COLUMNS)
    placeholders = ", ".join(["%s"] * len(EVENT_COLUMNS))
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({columns}) "
        f"VALUES ({placeholders}) RETURNING {quote('id')}"
    )


@lru_cache(maxsize=4)
def _insert_event_sql(vendor: str, *, with_rollup: bool = False) -> str:
    insert = insert_event_sql()
    if not with_rollup:
        return insert
    # PostgreSQL: the ledger row and its rollup upsert in one statement (one round trip).
    quote = connection.ops.quote_name
    return f"WITH ev AS ({insert}), r AS ({upsert_sql(1)}) SELECT {quote('id')} FROM ev"


def event_params(event: UsageEvent, *, with_rollup: bool = False) -> list[Any]:
    """The parameters of :func:`insert_event_sql` (then of the rollup upsert, if asked).

    Adapted by hand, in ``EVENT_COLUMNS`` order, as the fields' ``get_db_prep_save``
    would (``draws`` and ``properties`` None are SQL NULL): that costs more than the
    insert on SQLite. The event takes what the ledger keeps (see :func:`stored_properties`,
    :func:`stored_fingerprint`), so it answers as its row reads.
    """
    ops = connection.ops
    event.request_fingerprint = stored_fingerprint(
        event.idempotency_key, bytes(event.request_fingerprint)
    )
    event.properties = stored_properties(event.properties)
    draws, properties = event.draws, event.properties
    params = [
        event.customer_id,
        event.feature_id,
        event.amount,
        event.idempotency_key,
        bytes(event.request_fingerprint),
        None if properties is None else ops.adapt_json_value(properties, None),
        ops.adapt_datetimefield_value(event.created_at),
        event.balance_after,
        event.usage_after,
        event.from_grants,
        None if draws is None else ops.adapt_json_value(draws, None),
        event.used_feature_id,
        event.units,
    ]
    if with_rollup:
        day = ops.adapt_datefield_value(utc_day(event.created_at))
        params += [event.customer_id, event.feature_id, day, event.amount, 1]
    return params


def keyed_events(pairs: Iterable[tuple[int, str]]) -> QuerySet[UsageEvent]:
    """The ledger rows of these ``(customer id, idempotency key)`` pairs.

    Found on the unique index's digest (see :class:`~kernia_billing.models.usage.
    IdempotencyDigest`; the only index that holds the key), rechecked on the real columns.
    """
    by_customer: dict[int, set[str]] = {}
    for customer_id, key in pairs:
        by_customer.setdefault(customer_id, set()).add(key)
    if not by_customer:
        return UsageEvent.objects.none()
    digests: list[Any] = [
        IdempotencyDigest(Value(customer_id), Value(key))
        for customer_id, keys in by_customer.items()
        for key in sorted(keys)
    ]
    # Flat IN lists, no OR per customer (1,000 of them nest deeper than SQLite allows:
    # "Expression tree is too large"). With the digest they leave only pairs that share
    # an MD5 with a wanted one: exact for one pair; keyed_events_by_pair rechecks pairs.
    keys = sorted({key for customer_keys in by_customer.values() for key in customer_keys})
    return UsageEvent.objects.alias(key_digest=IdempotencyDigest()).filter(
        customer_id__in=sorted(by_customer), idempotency_key__in=keys, key_digest__in=digests
    )


def keyed_events_by_pair(pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], UsageEvent]:
    """:func:`keyed_events` for a batch, by pair.

    On PostgreSQL one statement whatever the count: the pairs go as two arrays and their
    digests are computed in the query (the ORM would compile a digest expression per key,
    most of a 1,000-event batch's lookup), found on the unique digest index, rechecked.
    """
    wanted = set(pairs)
    if not wanted:
        return {}
    if connection.vendor != "postgresql":
        found: Iterable[UsageEvent] = keyed_events(wanted)
    else:
        found = UsageEvent.objects.raw(_keyed_events_sql(), _pair_arrays(wanted))
    return {
        (e.customer_id, e.idempotency_key or ""): e
        for e in found
        if (e.customer_id, e.idempotency_key) in wanted
    }


def _pair_arrays(pairs: set[tuple[int, str]]) -> list[list[Any]]:
    ordered = sorted(pairs)
    customers, keys = [c for c, _ in ordered], [k for _, k in ordered]
    return [customers, keys, keys]


@lru_cache(maxsize=1)
def _keyed_events_sql() -> str:
    quote = connection.ops.quote_name
    # The same expression as the index's (IdempotencyDigest on PostgreSQL); the key in the
    # WHERE lets the planner prove the partial index's "key IS NOT NULL".
    digest = "md5((customer_id)::text || ':' || (idempotency_key))::uuid"
    pair_digests = (
        "ARRAY(SELECT md5((c)::text || ':' || (k))::uuid "
        "FROM unnest(%s::bigint[], %s::varchar[]) AS pair(c, k))"
    )
    return (
        f"SELECT * FROM {quote(UsageEvent._meta.db_table)} "
        f"WHERE {digest} = ANY({pair_digests}) AND idempotency_key = ANY(%s::varchar[])"
    )


def stored_properties(properties: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the ledger keeps of a request's properties: None (a free NULL) for none."""
    return properties or None


def stored_fingerprint(idempotency_key: str | None, fingerprint: bytes) -> bytes:
    """What the ledger keeps of a request's fingerprint: nothing when it has no key."""
    return fingerprint if idempotency_key is not None else b""


#: The columns batch track decides once its rows are locked; it knows the rest before.
LOCKED_COLUMNS = ("created_at", "balance_after", "usage_after")


def early_columns(events: Sequence[NewEvent]) -> list[list[Any]] | None:
    """:func:`insert_events`'s columns of ``events``, built before their rows are locked
    (PostgreSQL; None elsewhere): the insert reads only ``LOCKED_COLUMNS`` again."""
    return _pg_columns(events) if connection.vendor == "postgresql" else None


def _with_locked_columns(early: list[list[Any]], events: Sequence[NewEvent]) -> list[list[Any]]:
    columns = list(early)
    for name in LOCKED_COLUMNS:  # plain values: no converter (see _pg_converters)
        columns[EVENT_COLUMNS.index(name)] = [getattr(event, name) for event in events]
    return columns


def _pg_columns(events: Sequence[NewEvent]) -> list[list[Any]]:
    """The rows' ``EVENT_COLUMNS`` as psycopg takes them (JSON as text, cast in the SQL),
    one list per column (the unnest insert's arrays)."""
    columns = []
    for name, convert in zip(EVENT_COLUMNS, _pg_converters(), strict=True):
        values = [getattr(event, name) for event in events]
        if convert is not None:
            values = [None if value is None else convert(value) for value in values]
        columns.append(values)
    return columns


def _json_text(value: Any, *, encoder: type[json.JSONEncoder] | None) -> str:
    # Most events carry no properties: their text needs no encoder.
    return "{}" if type(value) is dict and not value else json.dumps(value, cls=encoder)


@lru_cache(maxsize=1)
def _event_fields() -> tuple[models.Field[Any, Any], ...]:
    fields = (UsageEvent._meta.get_field(name) for name in EVENT_COLUMNS)
    return tuple(field for field in fields if isinstance(field, models.Field))


@lru_cache(maxsize=1)
def _pg_converters() -> tuple[Callable[[Any], Any] | None, ...]:
    """Per ``EVENT_COLUMNS`` entry: how its value goes to psycopg (None: as it is)."""
    converters: list[Callable[[Any], Any] | None] = []
    for field in _event_fields():
        if isinstance(field, models.JSONField):
            converters.append(partial(_json_text, encoder=field.encoder))
        elif isinstance(field, models.BinaryField):
            converters.append(bytes)
        else:
            converters.append(None)
    return tuple(converters)


def _record_event(event: UsageEvent, *, with_rollup: bool = False) -> UsageEvent:
    """``INSERT ... RETURNING id`` of the ledger row; the ORM's save() costs more here.

    ``with_rollup`` (PostgreSQL only) adds the row's :func:`.rollups.record_rollup` upsert
    to the same statement.
    """
    params = event_params(event, with_rollup=with_rollup)
    with connection.cursor() as cursor:
        cursor.execute(_insert_event_sql(connection.vendor, with_rollup=with_rollup), params)
        event.pk = cursor.fetchone()[0]
    return event


@dataclass(slots=True)
class NewEvent:
    """A ledger row a batch decided to insert: the values of ``EVENT_COLUMNS``.

    Not a ``UsageEvent``: building 1,000 model instances costs more than inserting them.
    ``pk`` is set by :func:`insert_events`.
    """

    customer_id: int
    feature_id: int
    amount: int
    idempotency_key: str | None
    request_fingerprint: bytes  # as stored (see stored_fingerprint)
    properties: dict[str, Any] | None  # as stored (see stored_properties)
    created_at: datetime
    balance_after: int
    usage_after: int
    from_grants: int
    draws: list[dict[str, int | None]] | None
    used_feature_id: int | None
    units: int | None
    pk: int = 0  # set by insert_events


def insert_events(events: Sequence[NewEvent], *, early: list[list[Any]] | None = None) -> None:
    """Insert many ledger rows, set their ids, and record their rollups (same transaction).

    PostgreSQL: one statement, whatever the count: the rows go in as one array per
    column (``INSERT ... SELECT ... FROM unnest(...)``; a value all rows share, once),
    their ids drawn from the
    table's sequence in the events' order, and :func:`.rollups.record_rollups`'s upserts
    ride along in the same ``WITH``. (Django's ``bulk_create`` prepares each of the
    13,000 values of a 1,000-row batch through its field and builds a 13,000-placeholder
    statement: most of a batch's time.) Where the connection prepares statements, the
    arrays travel as bound parameters (``statement_cursor``, not prepared: the text varies),
    not as literals in a text the server parses: 15 -> 11.7 ms for 1,000 rows. Elsewhere
    (SQLite): ``bulk_create``, then the rollups. ``early``: :func:`early_columns` of
    these events, whose values have changed since only in ``LOCKED_COLUMNS``.
    """
    if not events:
        return
    if connection.vendor != "postgresql":
        rows = [UsageEvent(**{c: getattr(e, c) for c in EVENT_COLUMNS}) for e in events]
        UsageEvent.objects.bulk_create(rows, batch_size=500)
        for event, row in zip(events, rows, strict=True):
            event.pk = row.pk
        record_rollups(events)
        return
    upserts = rollup_upserts(events)
    columns = _pg_columns(events) if early is None else _with_locked_columns(early, events)
    # A column whose value every row shares (the batch's moment, its customer, often the
    # fingerprint and properties) goes once, not 1,000 times in the statement's text.
    shared = tuple(column.count(column[0]) == len(column) for column in columns)
    params = _events_params(columns, shared, len(events))
    source, insert, select = _insert_events_sql(shared, deducted=False)
    ctes = f"WITH src AS MATERIALIZED ({source}), ev AS ({insert})"
    for n, (upsert, upsert_params) in enumerate(upserts):
        ctes += f", r{n} AS ({upsert})"
        params += upsert_params
    with statement_cursor(prepare=False) as cursor:  # its text varies with the batch
        cursor.execute(f"{ctes} {select}", params)
        ids = cursor.fetchall()
    assert len(ids) == len(events)
    for event, (event_id,) in zip(events, ids, strict=True):
        event.pk = event_id


def _events_params(
    columns: list[list[Any]], shared: tuple[bool, ...], count: int, *, deducted: bool = False
) -> list[Any]:
    """:func:`_insert_events_sql`'s parameters: the shared values, the table, the arrays."""
    skip = {EVENT_COLUMNS.index(name) for name in _DEDUCTED_COLUMNS} if deducted else set()
    params: list[Any] = [
        column[0]
        for n, (column, same) in enumerate(zip(columns, shared, strict=True))
        if same and n not in skip
    ]
    params.append(UsageEvent._meta.db_table)
    params += [
        column
        for n, (column, same) in enumerate(zip(columns, shared, strict=True))
        if not same and n not in skip
    ]
    if all(shared) and not deducted:
        params.append(count)
    return params


#: In :func:`insert_deducted_events`, the columns its deduction decides.
_DEDUCTED_COLUMNS = {
    "usage_after": "d.base + src.running",
    "balance_after": "d.included - (d.base + src.running - d.grant_usage)",
}


def insert_deducted_events(
    deduction: tuple[str, list[Any]],
    events: Sequence[NewEvent],
    running: list[int],
    *,
    early: list[list[Any]] | None = None,
) -> bool | None:
    """PostgreSQL: a deduction from one entitlement and its events' ledger rows, with their
    rollups, in one statement (so the row's lock, which the deduction takes, is held for
    that statement and the ``COMMIT`` alone).

    ``deduction`` is a data-modifying query and its parameters, returning at most one row
    of ``base`` (the usage before), ``included``, ``grant_usage`` and ``unlimited`` of an
    entitlement without other grants (its balance: ``included - (usage - grant_usage)``);
    ``{events_ready}`` in its ``WHERE`` holds once the rows to insert are built, so they
    are built before it locks anything. Each event's usage after is ``base`` plus its
    ``running`` sum, its balance after that balance at it. Where the deduction returns
    no row nothing is inserted and the answer is None; else the events get their ids,
    usage and balance after, and the answer is ``unlimited``. ``early``: as for
    :func:`insert_events` (``created_at`` set; the usage and balance columns are the
    deduction's).
    """
    columns = _pg_columns(events) if early is None else _with_locked_columns(early, events)
    shared = tuple(column.count(column[0]) == len(column) for column in columns)
    sql, deduction_params = deduction
    params = [
        *_events_params(columns, shared, len(events), deducted=True),
        running,
        *deduction_params,
    ]
    source, insert, select = _insert_events_sql(shared, deducted=True)
    # The rows are built (1,000 nextval() calls: ~4 ms) before the deduction locks its row.
    built = sql.replace("{events_ready}", f"(SELECT count(*) FROM src) = {len(events):d}")
    ctes = f"WITH src AS MATERIALIZED ({source}), d AS ({built}), ev AS ({insert})"
    for n, (upsert, upsert_params) in enumerate(rollup_upserts(events, only_with="d")):
        ctes += f", r{n} AS ({upsert})"
        params += upsert_params
    with statement_cursor(prepare=False) as cursor:  # its text varies with the batch
        cursor.execute(f"{ctes} {select}", params)
        rows = cursor.fetchall()
    if not rows:
        return None
    assert len(rows) == len(events)
    _, base, included, grant_usage, unlimited = rows[0]
    for event, (event_id, *_), step in zip(events, rows, running, strict=True):
        event.pk = event_id
        event.usage_after = after = base + step
        event.balance_after = included - (after - grant_usage)
    return bool(unlimited)


@lru_cache(maxsize=64)
def _insert_events_sql(shared: tuple[bool, ...], *, deducted: bool) -> tuple[str, str, str]:
    """PostgreSQL: the ``src`` query of the rows to insert, the ``INSERT`` from it (the
    ``WITH`` queries ``src AS MATERIALIZED (...)`` and ``ev AS (...)``), and the ``SELECT``
    of their ids in the rows' order. Per ``EVENT_COLUMNS`` entry, ``shared`` says whether
    it comes as one value for all rows, else as an array. ``deducted``: the usage and
    balance after come from a ``d`` between the two (see :func:`insert_deducted_events`),
    after the other arrays comes the running sums'."""
    quote = connection.ops.quote_name
    fields = _event_fields()
    values, arrays, varying, columns = [], [], [], []
    for name, field, same in zip(EVENT_COLUMNS, fields, shared, strict=True):
        # JSON travels as text, cast once into the table; the attnames are the columns.
        kind = "text" if isinstance(field, models.JSONField) else field.db_type(connection)
        is_json = isinstance(field, models.JSONField)
        if deducted and name in _DEDUCTED_COLUMNS:
            columns.append(_DEDUCTED_COLUMNS[name])
            continue
        if same:
            values.append(f"%s::{kind} AS {quote(name)}")
        else:
            values.append(f"t.{quote(name)}")
            arrays.append(f"%s::{kind}[]")
            varying.append(quote(name))
        columns.append(f"{quote(name)}::jsonb" if is_json else quote(name))
    ordinal = quote("ordinal")
    if deducted:
        arrays.append("%s::bigint[]")
        varying.append("running")
        values.append("t.running")
    if arrays:
        rows = f"unnest({', '.join(arrays)}) WITH ORDINALITY AS t({', '.join(varying)}, {ordinal})"
    else:
        rows = f"generate_series(1, %s) AS t({ordinal})"
    # The ids come from the sequence in the rows' order, so the answer maps each id to
    # its event by position (never by the order RETURNING happens to give).
    source = (
        f"SELECT nextval(s.seq) AS {quote('id')}, {', '.join(values)}, t.{ordinal} FROM "
        f"(SELECT pg_get_serial_sequence(%s, 'id')::regclass AS seq) s CROSS JOIN {rows}"
    )
    names = ", ".join(quote(name) for name in EVENT_COLUMNS)
    joined = "src CROSS JOIN d" if deducted else "src"
    insert = (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({quote('id')}, {names}) "
        f"SELECT {quote('id')}, {', '.join(columns)} FROM {joined} ORDER BY {ordinal}"
    )
    decided = ", d.base, d.included, d.grant_usage, d.unlimited" if deducted else ""
    select = f"SELECT {quote('id')}{decided} FROM {joined} ORDER BY {ordinal}"
    return source, insert, select


def _track_result(
    feature: str, unlimited: bool, event: UsageEvent | NewEvent, *, replayed: bool
) -> TrackResult:
    return TrackResult(
        event_id=event.pk,
        feature=feature,
        amount=event.amount,
        balance=event.balance_after,
        usage=event.usage_after,
        included=event.balance_after + event.usage_after,
        unlimited=unlimited,
        replayed=replayed,
        created_at=event.created_at,
    )


def _record_tracked(event: UsageEvent, *, feature: str, unlimited: bool) -> UsageEvent:
    """Insert the ledger row of an accepted deduction and queue its signals."""
    if connection.vendor == "postgresql":
        _record_event(event, with_rollup=True)  # record_rollup, folded into the insert
    else:
        _record_event(event)
        record_rollup(event.customer_id, event.feature_id, event.created_at, event.amount)
    return after_recorded(event, feature=feature, unlimited=unlimited)


def after_recorded(
    event: UsageEvent, *, feature: str, unlimited: bool, outbox: bool = True
) -> UsageEvent:
    """What follows a ledger row's insert and rollup: its overage outbox row (unless
    ``outbox`` is False: the insert's statement wrote it), its signals."""
    if outbox:
        record_overage(event)  # metering: the outbox row of its overage, if any
    _notify_tracked(event.customer_id, feature, unlimited, event)
    return event


def _notify_tracked(customer_id: int, feature: str, unlimited: bool, event: UsageEvent) -> None:
    balance_before = event.balance_after + event.amount
    limit_reached = not unlimited and balance_before > 0 >= event.balance_after
    if not (signals.usage_tracked.has_listeners() or signals.limit_reached.has_listeners()):
        return  # the hot path pays nothing for signals nobody listens to

    def send() -> None:
        customer = BillingCustomer.objects.get(pk=customer_id)
        signals.usage_tracked.send(
            sender=UsageEvent,
            customer=customer,
            feature=feature,
            event_id=event.pk,
            amount=event.amount,
            balance=event.balance_after,
            usage=event.usage_after,
        )
        if limit_reached:
            signals.limit_reached.send(
                sender=UsageEvent,
                customer=customer,
                feature=feature,
                balance=event.balance_after,
            )

    transaction.on_commit(send)
