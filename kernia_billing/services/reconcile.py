"""Reconciliation: re-derive customer state from Stripe's truth.

- :func:`reconcile_customers` re-derives each customer's plan and subscription state from
  dj-stripe's mirror (``djstripe.Subscription.stripe_data``, parsed by
  :mod:`~kernia_billing.services.stripe_state`, never dj-stripe's ``current_period_*``),
  or from Stripe itself with ``refresh=True``, and reports what differs.
- the ledger audit (:func:`~kernia_billing.services.ledger_audit.audit_ledger`) has a
  module of its own.

It only reports unless ``fix=True``. Customer state is only fixed from fresh Stripe
data (``refresh=True``): the mirror may be older than what webhooks already applied, and
applying it would roll a customer back. ``kernia_reconcile`` is the command-line door.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.utils import timezone
from djstripe.models import Subscription

from ..models import (
    BillingCustomer,
    Plan,
    PlanPrice,
)
from ..selectors import default_plan, status_entitles
from ..types import Drift, Progress, SubscriptionSnapshot
from . import stripe_gateway
from .customers import apply_subscription, resolve_plan
from .stripe_state import (
    ENDED_STATUSES,
    list_customer_subscriptions,
    pick_subscription,
    snapshot_from_stripe,
)

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
