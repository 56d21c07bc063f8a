"""The outbox: overage units of accepted tracks, written in the track's transaction.

``overage = max(0, -balance_after) - max(0, -balance_before)``: only the part of a
track that goes beyond the spendable balance (the sum of the customer's grants) is
billed. A track of 5 from a balance of 2 yields 3; a track within the balance
yields nothing and costs nothing; one beyond it costs one INSERT. The row comes
after every lock the track took (``services/locking.py``: step 3, inserts only).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction

from ...conf import billing_settings
from ...models import OverageReport, ReportKind, UsageEvent
from .sender import send_pending

if TYPE_CHECKING:
    from ..usage.ledger import NewEvent

__all__ = [
    "identifier_for_event",
    "outbox_from_sql",
    "overage_units",
    "overage_units_sql",
    "record_overage",
    "record_overages",
    "send_on_commit_if_asked",
]


def overage_units(balance_before: int, balance_after: int) -> int:
    """Units of a track beyond the spendable balance (0 when it stayed within it)."""
    return max(0, -balance_after) - max(0, -balance_before)


def identifier_for_event(event_id: int) -> str:
    """The meter event identifier of a track's overage: stable, unique per ledger row."""
    return f"{_identifier_prefix()}{event_id}"


def _identifier_prefix() -> str:
    return f"{billing_settings.METER_IDENTIFIER_PREFIX}-usage-"


def _report(event: UsageEvent | NewEvent, value: int) -> OverageReport:
    return OverageReport(
        customer_id=event.customer_id,
        feature_id=event.feature_id,
        usage_event_id=event.pk,
        kind=ReportKind.TRACK,
        value=value,
        occurred_at=event.created_at,
        identifier=identifier_for_event(event.pk),
    )


def record_overage(event: UsageEvent) -> OverageReport | None:
    """The outbox row of ``event``'s overage, if it has any (call inside the track's
    transaction, after its ledger row is inserted)."""
    value = overage_units(event.balance_after + event.amount, event.balance_after)
    if value <= 0:
        return None
    report = _report(event, value)
    report.save(force_insert=True)
    send_on_commit_if_asked()
    return report


def record_overages(events: Iterable[UsageEvent | NewEvent]) -> list[OverageReport]:
    """:func:`record_overage` for the accepted events of a batch, in one INSERT."""
    reports = []
    for event in events:
        value = overage_units(event.balance_after + event.amount, event.balance_after)
        if value > 0:
            reports.append(_report(event, value))
    if reports:
        OverageReport.objects.bulk_create(reports, batch_size=500)
        send_on_commit_if_asked()
    return reports


def overage_units_sql(balance_after: str, amount: str) -> str:
    """:func:`overage_units` in SQL, of a track's ``balance_after`` and ``amount`` (in
    ``numeric``: the balance before may lie past bigint's end, as in Python)."""
    after = f"({balance_after})::numeric"
    return f"GREATEST(0, -{after}) - GREATEST(0, -({after} + ({amount})))"


def outbox_from_sql(source: str, moment: datetime) -> tuple[str, list[Any]]:
    """PostgreSQL: :func:`record_overage` as part of a track's statement: the ``INSERT``
    of the outbox rows of the ledger rows that the ``WITH`` query ``source`` returns
    (``id``, ``customer_id``, ``feature_id``, ``amount``, ``balance_after``,
    ``created_at``) and that have overage units, and its parameters. Every column of the
    model is written, as ``save()`` would (its defaults; ``created_at`` is ``moment``)."""
    sql, template = _outbox_template(source)
    prefix = _identifier_prefix()  # the setting, read each time
    at = connection.ops.adapt_datetimefield_value(moment)
    return sql, [prefix if p is _PREFIX else at if p is _MOMENT else p for p in template]


_PREFIX, _MOMENT = object(), object()  # outbox_from_sql's parameters of each call


@lru_cache(maxsize=4)
def _outbox_template(source: str) -> tuple[str, tuple[Any, ...]]:
    units = overage_units_sql(f"{source}.balance_after", f"{source}.amount")
    fields = {str(f.column): f for f in OverageReport._meta.concrete_fields if not f.primary_key}
    computed: dict[str, tuple[str, list[Any]]] = {
        "customer_id": (f"{source}.customer_id", []),
        "feature_id": (f"{source}.feature_id", []),
        "usage_event_id": (f"{source}.id", []),
        "kind": ("%s::varchar", [ReportKind.TRACK.value]),
        "value": (units, []),
        "occurred_at": (f"{source}.created_at", []),
        "identifier": (f"%s::varchar || {source}.id", [_PREFIX]),
        "created_at": ("%s::timestamptz", [_MOMENT]),
    }
    columns: list[str] = []
    values: list[str] = []
    params: list[Any] = []
    for column, field in fields.items():
        if column in computed:
            value, value_params = computed[column]
        else:  # the field's default, as the ORM would write it
            value = f"%s::{field.db_type(connection)}"
            value_params = [field.get_db_prep_save(field.get_default(), connection)]
        columns.append(connection.ops.quote_name(column))
        values.append(value)
        params += value_params
    sql = (
        f"INSERT INTO {connection.ops.quote_name(OverageReport._meta.db_table)} "
        f"({', '.join(columns)}) SELECT {', '.join(values)} FROM {source} WHERE {units} > 0 "
        "RETURNING 1"
    )
    return sql, tuple(params)


def send_on_commit_if_asked() -> None:
    """The opt-in fast path: send right after the track commits (the sender command
    still picks up whatever this misses). A writer of outbox rows calls it once they are
    written (``record_overage`` does; a statement that wrote them itself, after it)."""
    if not billing_settings.REPORT_USAGE_ON_COMMIT:
        return

    def send() -> None:
        try:
            send_pending(limit=billing_settings.METER_SEND_BATCH)
        except Exception:
            return

    transaction.on_commit(send)
