"""The ledger audit: an entitlement's usage equals the sum of its usage events since its
period start, plus its open holds of that period; with the rollups', grants' and
corrections' own audits. Only reports unless ``fix=True``; ``kernia_reconcile`` is the
command-line door (with :mod:`.reconcile`'s customer part).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from ..models import Entitlement, Reservation, ReservationStatus, UsageEvent
from ..types import Drift, Progress
from .grants.audit import audit_grants
from .metering.corrections import audit_corrections
from .usage.rollups import audit_rollups, rebuild_rollups

#: Before every period start: an entitlement that never resets sums all its events.
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)


def audit_ledger(
    *,
    fix: bool = False,
    customer_ids: list[int] | None = None,
    batch_size: int = 1000,
    after_entitlement: int = 0,
    progress: Progress | None = None,
) -> list[Drift]:
    """Entitlements whose usage is not the sum of their events since ``period_start``,
    daily rollups that differ from the ledger (same window), every drift of the grants
    (:func:`~.grants.audit.audit_grants`: per grant, consumed = what the draws took, no
    draw after expiry; per entitlement, the grant columns = the grants' sums), and of
    usage corrections (:func:`~.metering.corrections.audit_corrections`). A fix repairs
    usage and rebuilds the drifting customers' rollups from the ledger; grant and
    correction drifts are reported.

    It costs the current period, not history: one statement per batch of entitlements
    sums only the events since each one's period start, on the customer + feature +
    time index (all events for an entitlement that never resets). Batches go by
    entitlement id from ``after_entitlement``, and ``progress`` hears of each one, so an
    interrupted audit resumes where it stopped.

    A fix writes the ledger's sum with a conditional ``UPDATE`` on the usage it read, so
    a track that lands meanwhile is never overwritten (that row is reported, not fixed).
    """
    with _without_jit():
        return _audit_ledger(
            fix=fix,
            customer_ids=customer_ids,
            batch_size=batch_size,
            after_entitlement=after_entitlement,
            progress=progress,
        )


@contextmanager
def _without_jit() -> Iterator[None]:
    """PostgreSQL's JIT off for the audit's statements, then the session's setting back.

    Each is a batch of index range lookups. Over a partitioned ledger the planner's
    estimate (an ``Append`` of every month per lookup) passes ``jit_above_cost``, and
    compiling the plan (~130 functions) took ~10x the statement itself (70 ms against
    6 ms a batch at 1M rows): the audit was twice as slow as on the plain ledger.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit'), set_config('jit', 'off', false)")
        (before, _) = cursor.fetchone()
    try:
        yield
    except BaseException:
        # Restored on an error too (in autocommit the SET has committed); a failed
        # transaction refuses the statement, and its rollback undoes the SET itself.
        with suppress(DatabaseError):
            _set_jit(before)
        raise
    _set_jit(before)


def _set_jit(value: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('jit', %s, false)", [value])


def _audit_ledger(
    *,
    fix: bool,
    customer_ids: list[int] | None,
    batch_size: int,
    after_entitlement: int,
    progress: Progress | None,
) -> list[Drift]:
    events = UsageEvent.objects.filter(
        customer_id=OuterRef("customer_id"),
        feature_id=OuterRef("feature_id"),
        created_at__gte=OuterRef("since"),
    )
    total = events.order_by().values("customer_id").annotate(total=Sum("amount"))

    def held_sum(*, never_resets: bool) -> Any:
        # Open holds are usage without their ledger row yet (services/reservations): only
        # those of the current period are in ``usage`` (a reset wiped older ones).
        holds = Reservation.objects.filter(
            entitlement_id=OuterRef("pk"), status=ReservationStatus.OPEN
        )
        if never_resets:
            holds = holds.filter(period_start__isnull=True)
        else:
            holds = holds.filter(period_start=OuterRef("period_start"))
        held = holds.order_by().values("entitlement_id").annotate(total=Sum("held"))
        return Coalesce(Subquery(held.values("total")), Value(0))

    rows = (
        Entitlement.objects.annotate(since=Coalesce("period_start", Value(_BEGINNING)))
        .annotate(
            ledger=Coalesce(Subquery(total.values("total")), Value(0)),
            held_in_period=held_sum(never_resets=False),
            held_all=held_sum(never_resets=True),
        )
        .select_related("feature")
        .order_by("pk")
    )
    if customer_ids is not None:
        rows = rows.filter(customer_id__in=customer_ids)
    ledger_drifts: list[Drift] = []
    rollup_drifts: list[Drift] = []
    after, done = after_entitlement, 0
    while True:
        batch = list(rows.filter(pk__gt=after)[:batch_size])
        if not batch:
            break
        keys = {}
        for entitlement in batch:
            keys[(entitlement.customer_id, entitlement.feature_id)] = entitlement.feature.key
            held = (
                entitlement.held_all
                if entitlement.period_start is None
                else entitlement.held_in_period
            )
            ledger = entitlement.ledger + held
            if ledger == entitlement.usage:
                continue
            fixed = False
            if fix and ledger >= 0:
                fixed = bool(
                    Entitlement.objects.filter(pk=entitlement.pk, usage=entitlement.usage).update(
                        usage=ledger
                    )
                )
            ledger_drifts.append(
                Drift(
                    "ledger",
                    entitlement.customer_id,
                    entitlement.feature.key,
                    ledger,
                    entitlement.usage,
                    fixed=fixed,
                )
            )
        found = audit_rollups([e.pk for e in batch])
        if fix and found:
            with transaction.atomic():
                rebuild_rollups(sorted({customer_id for customer_id, *_ in found}))
        for customer_id, feature_id, day, expected, actual in found:
            subject = f"{keys.get((customer_id, feature_id), feature_id)} rollup {day}"
            rollup_drifts.append(Drift("rollup", customer_id, subject, expected, actual, fixed=fix))
        after, done = batch[-1].pk, done + len(batch)
        if progress is not None:
            progress("entitlements", done, after)
    ledger_drifts.sort(key=lambda d: (d.customer_id, d.subject))
    return (
        ledger_drifts + rollup_drifts + audit_grants(customer_ids) + audit_corrections(customer_ids)
    )
