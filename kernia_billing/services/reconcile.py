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

from typing import Any

from django.db.models import OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from djstripe.models import Subscription

from ..models import BillingCustomer, Entitlement, Reservation, ReservationStatus, UsageEvent
from ..types import Drift, SubscriptionSnapshot
from . import stripe_gateway
from .customers import apply_subscription, resolve_plan
from .grants.audit import audit_grants
from .stripe_state import list_customer_subscriptions, pick_subscription

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


def _expected(snapshot: SubscriptionSnapshot | None) -> dict[str, Any]:
    plan = resolve_plan(snapshot)
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
    expected, stored = _expected(snapshot), _stored(customer)
    differences = [name for name in CUSTOMER_FIELDS if expected[name] != stored[name]]
    fixed = False
    if differences and fix and refresh:
        fixed = apply_subscription(customer, snapshot, state_at=read_at)
    return [
        Drift("customer", customer.pk, name, expected[name], stored[name], fixed=fixed)
        for name in differences
    ]


def reconcile_customers(
    *, refresh: bool = False, fix: bool = False, api_key: str | None = None
) -> list[Drift]:
    """:func:`reconcile_customer` for every billing customer."""
    drifts: list[Drift] = []
    for customer in BillingCustomer.objects.select_related("plan").order_by("pk").iterator():
        drifts.extend(reconcile_customer(customer, refresh=refresh, fix=fix, api_key=api_key))
    return drifts


def audit_ledger(*, fix: bool = False, customer_ids: list[int] | None = None) -> list[Drift]:
    """Entitlements whose usage is not the sum of their events since ``period_start``,
    and every drift of the grants (:func:`~.grants.audit.audit_grants`: per grant,
    consumed = what the draws took, no draw after expiry; per entitlement, the grant
    columns = the grants' sums). Only usage is fixed; grant drifts are reported.

    A fix writes the ledger's sum with a conditional ``UPDATE`` on the usage it read, so
    a track that lands meanwhile is never overwritten (that row is reported, not fixed).
    """

    def ledger_sum(*, since_period_start: bool) -> Any:
        events = UsageEvent.objects.filter(
            customer_id=OuterRef("customer_id"), feature_id=OuterRef("feature_id")
        )
        if since_period_start:
            events = events.filter(created_at__gte=OuterRef("period_start"))
        total = events.order_by().values("customer_id").annotate(total=Sum("amount"))
        return Coalesce(Subquery(total.values("total")), Value(0))

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
        total = holds.order_by().values("entitlement_id").annotate(total=Sum("held"))
        return Coalesce(Subquery(total.values("total")), Value(0))

    rows = Entitlement.objects.annotate(
        in_period=ledger_sum(since_period_start=True),
        all_time=ledger_sum(since_period_start=False),
        held_in_period=held_sum(never_resets=False),
        held_all=held_sum(never_resets=True),
    ).select_related("feature")
    if customer_ids is not None:
        rows = rows.filter(customer_id__in=customer_ids)
    drifts = []
    for entitlement in rows.order_by("customer_id", "feature__key"):
        # An entitlement that never resets has no period start: all its events count.
        ledger = entitlement.all_time if entitlement.period_start is None else entitlement.in_period
        ledger += (
            entitlement.held_all if entitlement.period_start is None else entitlement.held_in_period
        )
        if ledger == entitlement.usage:
            continue
        fixed = False
        if fix and ledger >= 0:
            fixed = bool(
                Entitlement.objects.filter(pk=entitlement.pk, usage=entitlement.usage).update(
                    usage=ledger
                )
            )
        drifts.append(
            Drift(
                "ledger",
                entitlement.customer_id,
                entitlement.feature.key,
                ledger,
                entitlement.usage,
                fixed=fixed,
            )
        )
    return drifts + audit_grants(customer_ids)
