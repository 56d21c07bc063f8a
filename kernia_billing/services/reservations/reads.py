"""Reading reservations: the answer every door gives, the owner's open holds, and the
one raw statement that reads a reservation beside its entitlement.

Lock order: the package's (:mod:`kernia_billing.services.reservations`);
:func:`read_hold` with ``lock`` takes the entitlement, then the reservation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection, models
from django.db.models import Q
from django.utils import timezone

from ...exceptions import UnknownReservation
from ...models import Feature, Reservation, ReservationStatus
from ..entitlements.rows import EntitlementRow, _aware, _select_with
from .giveback import AnyReservation, ReservationRow, expire_open_holds


@dataclass(frozen=True, slots=True)
class ReservationResult:
    """A reservation as every door answers it; amounts in the reserved feature's units."""

    id: int
    feature: str
    amount: int
    status: str
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None = None
    actual: int | None = None
    event_id: int | None = None
    balance: int | None = None
    credit_cost: int | None = None
    replayed: bool = False


def reservation_result(
    reservation: AnyReservation,
    *,
    balance: int | None = None,
    replayed: bool = False,
    feature: str | None = None,
) -> ReservationResult:
    """The answer for a stored reservation (``feature``: its key, read when not given)."""
    cost = reservation.amount // reservation.units if reservation.units else None
    if feature is None:
        used = reservation.used_feature_id or reservation.feature_id
        feature = Feature.objects.filter(pk=used).values_list("key", flat=True).get()
    return ReservationResult(
        id=reservation.pk,
        feature=feature,
        amount=reservation.units or reservation.amount,
        status=reservation.status,
        expires_at=reservation.expires_at,
        created_at=reservation.created_at,
        closed_at=reservation.closed_at,
        actual=reservation.actual,
        event_id=reservation.event_id,
        balance=balance // cost if balance is not None and cost else balance,
        credit_cost=cost,
        replayed=replayed,
    )


def list_reservations(
    customer_id: int | None, *, feature: str | None = None
) -> list[ReservationResult]:
    """The customer's open reservations, soonest-expiring first (expired ones given back)."""
    if customer_id is None:
        return []
    expire_open_holds(Q(customer_id=customer_id), timezone.now())
    rows = Reservation.objects.filter(customer_id=customer_id, status=ReservationStatus.OPEN)
    if feature is not None:
        rows = rows.filter(Q(feature__key=feature) | Q(used_feature__key=feature))
    keys = dict(Feature.objects.values_list("pk", "key"))
    found = rows.order_by("expires_at", "pk")[:500]
    return [reservation_result(r, feature=keys[r.used_feature_id or r.feature_id]) for r in found]


def customer_of(reservation_id: Any) -> int:
    """The customer a reservation belongs to (404 when there is none)."""
    check_reservation_id(reservation_id)
    with connection.cursor() as cursor:
        cursor.execute(_customer_of_sql(), [reservation_id])
        found = cursor.fetchone()
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    return int(found[0])


def check_reservation_id(reservation_id: Any) -> None:
    """A reservation id is a positive 64-bit integer; anything else is 404 unknown."""
    if isinstance(reservation_id, bool) or not isinstance(reservation_id, int):
        raise UnknownReservation(fields={"reservation": str(reservation_id)[:64]})
    if not 0 < reservation_id < 2**63:
        raise UnknownReservation(fields={"reservation": reservation_id})


def get_reservation(reservation_id: Any) -> tuple[ReservationRow, str]:
    """The reservation and the key of the feature it reserved (404 when there is none)."""
    check_reservation_id(reservation_id)
    found = read_hold(reservation_id, lock=False)
    if found is None:
        raise UnknownReservation(fields={"reservation": reservation_id})
    return found[0], found[2]


def read_hold(
    reservation_id: int, *, lock: bool
) -> tuple[ReservationRow, EntitlementRow, str] | None:
    """One statement: the reservation, its entitlement's row and the key of the feature
    reserved (a credit pool's used feature). ``lock``: the entitlement (step 2 of the lock
    order), then the reservation (locked in the order the ``OF`` list names them)."""
    # Raw and converted here: a RawQuerySet cost more to build than the query (bench/).
    where = "r.id = %s"
    if lock and connection.features.has_select_for_update_of:
        where += " FOR UPDATE OF e, r"
    also, join = _hold_select()
    found = _select_with(where, [reservation_id], also=also, join=join)
    if found is None:
        return None
    row, values = found
    columns = list(values[:-1])
    for index, convert in _hold_converters():
        if columns[index] is not None:
            columns[index] = convert(columns[index])
    return ReservationRow(*columns), row, values[-1] or row.feature


@lru_cache(maxsize=1)
def _hold_select() -> tuple[str, str]:
    """The reservation's columns (model order) and the used feature's key; their joins."""
    quote = connection.ops.quote_name
    columns = [f"r.{quote(str(field.column))}" for field in Reservation._meta.concrete_fields]
    join = (
        f"JOIN {quote(Reservation._meta.db_table)} r ON r.entitlement_id = e.id "
        f"LEFT JOIN {quote(Feature._meta.db_table)} uf ON uf.id = r.used_feature_id "
    )
    return ", ".join([*columns, "uf.key"]), join


@lru_cache(maxsize=1)
def _hold_converters() -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """``(column index, converter)``: what the ORM would apply to the columns read raw
    (the drivers differ for datetimes; JSON comes as text from both)."""
    converters: list[tuple[int, Callable[[Any], Any]]] = []
    for index, field in enumerate(Reservation._meta.concrete_fields):
        if isinstance(field, models.DateTimeField):
            converters.append((index, _aware))
        elif isinstance(field, models.JSONField):
            converters.append((index, _json))
        elif isinstance(field, models.BinaryField):
            converters.append((index, bytes))
    return tuple(converters)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@lru_cache(maxsize=1)
def _customer_of_sql() -> str:
    table = connection.ops.quote_name(Reservation._meta.db_table)
    return f"SELECT customer_id FROM {table} WHERE id = %s"
