"""Entitlement rows read with one raw SELECT: the row type, its columns and converters."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.utils.dateparse import parse_datetime

from ...models import (
    BillingCustomer,
    Entitlement,
    Feature,
    Plan,
)
from ...selectors import owner_ref
from ..prepared import statement_cursor

# --- reads -------------------------------------------------------------------------------


@dataclass(slots=True)
class EntitlementRow:
    """An entitlement as the hot path needs it: read by one SELECT, no model instances.

    Building a select_related ORM query costs more than the database round trip
    it makes (see bench/), so check and track read through :func:`_select`.
    """

    id: int
    customer_id: int
    feature_id: int
    feature: str
    kind: str
    granted: bool
    included: int
    usage: int
    unlimited: bool
    allow_overage: bool
    reset_period: str
    reset_anchor: datetime | None
    period_start: datetime | None
    next_reset_at: datetime | None
    plan_id: int | None
    plan: str | None
    customer_period_start: datetime | None
    customer_created_at: datetime
    billing_interval: str
    billing_interval_count: int
    feature_name: str
    grant_usage: int
    grant_remaining: int
    grant_next_expiry: datetime | None
    rollover_max: int
    rollover_expires_after: int
    #: The credit pool the feature draws from, if any (``services.usage.pools``).
    credit_pool_id: int | None = None

    @property
    def plan_remaining(self) -> int:
        """What is left of the plan's grant this period (negative in overage)."""
        return self.included - (self.usage - self.grant_usage)

    @property
    def balance(self) -> int:
        """Spendable now: the plan's grant left plus what remains of the other grants.

        Exact only while no grant expiry is due (``expiry_due``): readers record due
        expiries first (:func:`kernia_billing.services.grants.expiry.expire_due`).
        """
        return self.plan_remaining + self.grant_remaining

    def expiry_due(self, now: datetime) -> bool:
        return self.grant_next_expiry is not None and self.grant_next_expiry <= now

    def reset_due(self, now: datetime) -> bool:
        """Whether ``now`` is past the period's end (the lazy reset applies it)."""
        return self.next_reset_at is not None and self.next_reset_at <= now

    @property
    def reset_anchor_or_default(self) -> datetime:
        return self.reset_anchor or self.customer_period_start or self.customer_created_at


#: One list drives the row: each field of :class:`EntitlementRow`, in order, and the
#: ``alias.column`` it is read from (e: entitlement, c: customer, f: feature, p: plan).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "e", "id"),
    ("customer_id", "e", "customer_id"),
    ("feature_id", "e", "feature_id"),
    ("feature", "f", "key"),
    ("kind", "f", "kind"),
    ("granted", "e", "granted"),
    ("included", "e", "included"),
    ("usage", "e", "usage"),
    ("unlimited", "e", "unlimited"),
    ("allow_overage", "e", "allow_overage"),
    ("reset_period", "e", "reset_period"),
    ("reset_anchor", "e", "reset_anchor"),
    ("period_start", "e", "period_start"),
    ("next_reset_at", "e", "next_reset_at"),
    ("plan_id", "c", "plan_id"),
    ("plan", "p", "key"),
    ("customer_period_start", "c", "current_period_start"),
    ("customer_created_at", "c", "created_at"),
    ("billing_interval", "c", "billing_interval"),
    ("billing_interval_count", "c", "billing_interval_count"),
    ("feature_name", "f", "name"),
    ("grant_usage", "e", "grant_usage"),
    ("grant_remaining", "e", "grant_remaining"),
    ("grant_next_expiry", "e", "grant_next_expiry"),
    ("rollover_max", "e", "rollover_max"),
    ("rollover_expires_after", "e", "rollover_expires_after"),
    ("credit_pool_id", "f", "credit_pool_id"),
)
_FIELDS = fields(EntitlementRow)
assert [f.name for f in _FIELDS] == [name for name, _, _ in COLUMNS], "COLUMNS follows the row"
# Converters follow the fields' types: the drivers differ for datetimes and booleans.
_DATETIME_COLUMNS = tuple(i for i, f in enumerate(_FIELDS) if str(f.type).startswith("datetime"))
_BOOLEAN_COLUMNS = tuple(i for i, f in enumerate(_FIELDS) if str(f.type) == "bool")


@lru_cache(maxsize=8)
def _select_sql(where: str, also: str = "", join: str = "") -> str:
    """The row's SELECT; ``also`` adds columns after the row's, ``join`` another table."""
    quote = connection.ops.quote_name
    entitlement = quote(Entitlement._meta.db_table)
    customer = quote(BillingCustomer._meta.db_table)
    feature = quote(Feature._meta.db_table)
    plan = quote(Plan._meta.db_table)
    columns = ", ".join(f"{alias}.{quote(column)}" for _, alias, column in COLUMNS)
    return (
        f"SELECT {columns}{', ' + also if also else ''} FROM {entitlement} e "
        f"JOIN {customer} c ON c.id = e.customer_id "
        f"JOIN {feature} f ON f.id = e.feature_id "
        f"LEFT JOIN {plan} p ON p.id = c.plan_id {join}WHERE {where}"
    )


def _select(where: str, params: list[Any]) -> EntitlementRow | None:
    rows = _select_many(where, params)
    return rows[0] if rows else None


def _select_many(where: str, params: list[Any]) -> list[EntitlementRow]:
    with statement_cursor() as cursor:
        cursor.execute(_select_sql(where), params)
        rows = cursor.fetchall()
    return [_row(values) for values in rows]


def _select_with(
    where: str, params: list[Any], *, also: str, join: str
) -> tuple[EntitlementRow, tuple[Any, ...]] | None:
    """One row and the ``also`` columns read beside it (raw driver values), or None."""
    with connection.cursor() as cursor:
        cursor.execute(_select_sql(where, also, join), params)
        found = cursor.fetchone()
    if found is None:
        return None
    return _row(found[: len(COLUMNS)]), tuple(found[len(COLUMNS) :])


def _row(row: Any) -> EntitlementRow:
    values = list(row)
    for index in _DATETIME_COLUMNS:
        values[index] = _aware(values[index])
    for index in _BOOLEAN_COLUMNS:
        values[index] = bool(values[index])
    return EntitlementRow(*values)


def _aware(value: Any) -> datetime | None:
    """SQLite hands back naive UTC datetimes (or strings); PostgreSQL aware ones."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value  # type: ignore[no-any-return]


def _load(owner: Any, feature_key: str) -> EntitlementRow | None:
    """The owner's entitlement for ``feature_key`` with its feature and plan keys."""
    if isinstance(owner, BillingCustomer):
        return _select("c.id = %s AND f.key = %s", [owner.pk, feature_key])
    owner_type_id, owner_id = owner_ref(owner)
    return _select(
        "c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s",
        [owner_type_id, owner_id, feature_key],
    )


#: The row's own columns (alias ``e``): what an ``UPDATE ... RETURNING`` of the
#: entitlement hands back, merged into a row by :func:`_merge_returned`.
OWN_COLUMNS: tuple[str, ...] = tuple(column for _, alias, column in COLUMNS if alias == "e")
_OWN_FIELDS = tuple(name for name, alias, _ in COLUMNS if alias == "e")


@lru_cache(maxsize=1)
def returning_sql() -> str:
    quote = connection.ops.quote_name
    return "RETURNING " + ", ".join(quote(column) for column in OWN_COLUMNS)


def _merge_returned(row: EntitlementRow, returned: Any) -> EntitlementRow:
    """``row`` with its entitlement columns as ``returning_sql()`` read them (the
    customer's, feature's and plan's columns kept)."""
    values = dict(zip(_OWN_FIELDS, returned, strict=True))
    for name in _DATETIME_NAMES.intersection(values):
        values[name] = _aware(values[name])
    for name in _BOOLEAN_NAMES.intersection(values):
        values[name] = bool(values[name])
    return replace(row, **values)


_DATETIME_NAMES = frozenset(_FIELDS[i].name for i in _DATETIME_COLUMNS)
_BOOLEAN_NAMES = frozenset(_FIELDS[i].name for i in _BOOLEAN_COLUMNS)


def _reload(entitlement_id: int) -> EntitlementRow:
    row = _select("e.id = %s", [entitlement_id])
    assert row is not None, "entitlements are never deleted while in use"
    return row
