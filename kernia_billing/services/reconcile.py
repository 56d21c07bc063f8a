"""Reconciliation: re-derive customer state from Stripe's truth and audit the usage ledger.

- :func:`reconcile_customers` re-derives each customer's plan and subscription state from
  dj-stripe's mirror (``djstripe.Subscription.stripe_data``, parsed by
  :mod:`~kernia_billing.services.stripe_state`, never dj-stripe's ``current_period_*``),
  or from Stripe itself with ``refresh=True``, and reports what differs.
- :func:`audit_ledger` checks the ledger invariant: an entitlement's usage equals the sum
  of its usage events since its period start, plus its open holds of that period.

Both only report unless ``fix=True``. Customer state is only fixed from fresh Stripe
data (``refresh=True``): the mirror may be older than what webhooks already applied, and
applying it would roll a customer back. ``kernia_reconcile`` is the command-line door.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from djstripe.models import Subscription

from ..models import (
    BillingCustomer,
    Entitlement,
    Plan,
    PlanPrice,
    Reservation,
    ReservationStatus,
    UsageEvent,
)
from ..selectors import default_plan, status_entitles
from ..types import Drift, SubscriptionSnapshot
from . import stripe_gateway
from .customers import apply_subscription, resolve_plan
from .grants.audit import audit_grants
from .metering.corrections import audit_corrections
from .stripe_state import (
    ENDED_STATUSES,
    list_customer_subscriptions,
    pick_subscription,
    snapshot_from_stripe,
)
from .usage.rollups import audit_rollups, rebuild_rollups

CUSTOMER_FIELDS = (
    "plan",
    "stripe_subscription_id",
    "subscription_status",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "trial_end",
    "seat_quantity",
)


def _mirror_subscriptions(stripe_customer_id: str) -> list[dict[str, Any]]:
    rows = Subscription.objects.filter(customer__id=stripe_customer_id).values_list(
        "stripe_data", flat=True
    )
    return [dict(data) for data in rows if data]


def _refresh_mirror(subscriptions: list[dict[str, Any]], api_key: str | None) -> None:
    for data in subscriptions:
        # dj-stripe pages through items, so it wants SDK objects rather than dicts.
        stripe_gateway.mirror(Subscription, data, api_key=api_key, as_sdk_object="subscription")


def _expected(snapshot: SubscriptionSnapshot | None, plan: Plan | None) -> dict[str, Any]:
    if snapshot is None:
        return {
            "plan": plan.key if plan else None,
            "stripe_subscription_id": "",
            "subscription_status": "",
            "current_period_start": None,
            "current_period_end": None,
            "cancel_at_period_end": False,
            "trial_end": None,
            "seat_quantity": None,
        }
    return {
        "plan": plan.key if plan else None,
        "stripe_subscription_id": snapshot.id,
        "subscription_status": snapshot.status,
        "current_period_start": snapshot.current_period_start,
        "current_period_end": snapshot.current_period_end,
        "cancel_at_period_end": snapshot.cancel_at_period_end,
        "trial_end": snapshot.trial_end,
        "seat_quantity": snapshot.quantity,
    }


def _stored(customer: BillingCustomer) -> dict[str, Any]:
    values = {name: getattr(customer, name) for name in CUSTOMER_FIELDS if name != "plan"}
    values["plan"] = customer.plan.key if customer.plan else None
    return values


def reconcile_customer(
    customer: BillingCustomer,
    *,
    refresh: bool = False,
    fix: bool = False,
    api_key: str | None = None,
) -> list[Drift]:
    """Differences between one customer's stored state and its subscriptions' state.

    ``fix`` applies the state only with ``refresh`` (read from Stripe now, guarded by
    the time of that read, so a webhook applied meanwhile is not undone); otherwise the
    drift is reported, unfixed.
    """
    snapshot = None
    # Stripe event times are whole seconds: an event of this very second is not older.
    read_at = timezone.now().replace(microsecond=0)
    if customer.stripe_customer_id:
        if refresh:
            subscriptions = list_customer_subscriptions(
                customer.stripe_customer_id, api_key=api_key
            )
            if fix:
                _refresh_mirror(subscriptions, api_key)
        else:
            subscriptions = _mirror_subscriptions(customer.stripe_customer_id)
        snapshot = pick_subscription(subscriptions)
    expected, stored = _expected(snapshot, resolve_plan(snapshot)), _stored(customer)
    differences = [name for name in CUSTOMER_FIELDS if expected[name] != stored[name]]
    fixed = False
    if differences and fix and refresh:
        fixed = apply_subscription(customer, snapshot, state_at=read_at)
    return [
        Drift("customer", customer.pk, name, expected[name], stored[name], fixed=fixed)
        for name in differences
    ]


class _PlanIndex:
    """The catalog's price -> plan mapping and the default plan, read once per run.

    Answers what :func:`~.customers.resolve_plan` and
    :func:`~.stripe_state.pick_subscription` ask the database per customer, from memory,
    with the same ordering (plan ``display_order`` descending, then key).
    """

    def __init__(self) -> None:
        self.plans: dict[str, list[Plan]] = defaultdict(list)
        for link in PlanPrice.objects.select_related("plan", "price").order_by(
            "-plan__display_order", "plan__key"
        ):
            self.plans[link.price.stripe_id].append(link.plan)
        self.default = default_plan()

    def best(self, price_ids: tuple[str, ...] | list[str]) -> Plan | None:
        found = [plan for price in price_ids for plan in self.plans.get(price, ())]
        return min(found, key=lambda p: (-p.display_order, p.key)) if found else None

    def resolve(self, snapshot: SubscriptionSnapshot | None) -> Plan | None:
        if snapshot is not None and status_entitles(snapshot.status):
            plan = self.best(snapshot.price_ids)
            if plan is not None:
                return plan
        return self.default

    def pick(self, subscriptions: list[dict[str, Any]]) -> SubscriptionSnapshot | None:
        candidates = []
        for data in subscriptions:
            snapshot = snapshot_from_stripe(data)
            if snapshot.status in ENDED_STATUSES:
                rank = 3
            elif status_entitles(snapshot.status):
                rank = 0 if self.best(snapshot.price_ids) is not None else 1
            else:
                rank = 2
            candidates.append((rank, -int(data.get("created") or 0), data))
        if not candidates:
            return None
        candidates.sort(key=lambda c: (c[0], c[1]))
        return snapshot_from_stripe(candidates[0][2])


def reconcile_customers(
    *,
    refresh: bool = False,
    fix: bool = False,
    api_key: str | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> list[Drift]:
    """:func:`reconcile_customer` for every billing customer, in batches.

    From the mirror (no ``refresh``) it is set-based: one query for a batch of customers,
    one for their mirrored subscriptions, the plan mapping read once per run; no query
    per customer. With ``refresh`` each customer is one Stripe call (as before).
    """
    drifts: list[Drift] = []
    index = None if refresh else _PlanIndex()
    customers = BillingCustomer.objects.select_related("plan").order_by("pk")
    after, done = 0, 0
    while True:
        batch = list(customers.filter(pk__gt=after)[:batch_size])
        if not batch:
            break
        if index is None:
            for customer in batch:
                drifts.extend(
                    reconcile_customer(customer, refresh=refresh, fix=fix, api_key=api_key)
                )
        else:
            drifts.extend(_reconcile_from_mirror(batch, index))
        after, done = batch[-1].pk, done + len(batch)
        if progress is not None:
            progress("customers", done, after)
    return drifts


def _reconcile_from_mirror(batch: list[BillingCustomer], index: _PlanIndex) -> list[Drift]:
    """Customer drift of a batch against dj-stripe's mirror (reported, never fixed)."""
    by_stripe_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stripe_ids = [c.stripe_customer_id for c in batch if c.stripe_customer_id]
    rows = Subscription.objects.filter(customer__id__in=stripe_ids).values_list(
        "customer__id", "stripe_data"
    )
    for stripe_customer_id, data in rows:
        if data:
            by_stripe_id[stripe_customer_id].append(dict(data))
    drifts: list[Drift] = []
    for customer in batch:
        snapshot = None
        if customer.stripe_customer_id:
            snapshot = index.pick(by_stripe_id.get(customer.stripe_customer_id, []))
        expected = _expected(snapshot, index.resolve(snapshot))
        stored = _stored(customer)
        drifts.extend(
            Drift("customer", customer.pk, name, expected[name], stored[name])
            for name in CUSTOMER_FIELDS
            if expected[name] != stored[name]
        )
    return drifts


#: ``progress(part, rows done, last id)``: how far a batched audit or reconcile got; the
#: last id resumes it (``kernia_reconcile --after-entitlement``).
Progress = Callable[[str, int, int], None]

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
