"""The outbox: overage units of accepted tracks, written in the track's transaction.

``overage = max(0, -balance_after) - max(0, -balance_before)``: only the part of a
track that goes beyond the spendable balance (the sum of the customer's grants) is
billed. A track of 5 from a balance of 2 yields 3; a track within the balance
yields nothing and costs nothing; one beyond it costs one INSERT. The row comes
after every lock the track took (``services/locking.py``: step 3, inserts only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db import transaction

from ...conf import billing_settings
from ...models import OverageReport, ReportKind, UsageEvent
from .sender import send_pending

if TYPE_CHECKING:
    from ..usage.ledger import NewEvent

__all__ = ["identifier_for_event", "overage_units", "record_overage", "record_overages"]


def overage_units(balance_before: int, balance_after: int) -> int:
    """Units of a track beyond the spendable balance (0 when it stayed within it)."""
    return max(0, -balance_after) - max(0, -balance_before)


def identifier_for_event(event_id: int) -> str:
    """The meter event identifier of a track's overage: stable, unique per ledger row."""
    return f"{billing_settings.METER_IDENTIFIER_PREFIX}-usage-{event_id}"


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
    _maybe_send_on_commit()
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
        _maybe_send_on_commit()
    return reports


def _maybe_send_on_commit() -> None:
    """The opt-in fast path: send right after the track commits (the sender command
    still picks up whatever this misses)."""
    if not billing_settings.REPORT_USAGE_ON_COMMIT:
        return

    def send() -> None:
        try:
            send_pending(limit=billing_settings.METER_SEND_BATCH)
        except Exception:
            return

    transaction.on_commit(send)
