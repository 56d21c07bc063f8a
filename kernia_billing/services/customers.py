"""Billing customers: who owns them, which plan they are on, and applying Stripe state.

Every door (REST, admin, webhooks, commands, Python API) goes through here to
find or create a customer and to change its plan or subscription state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from .. import signals
from ..models import BillingCustomer, Plan
from ..selectors import default_plan, get_customer, owner_ref, plan_for_prices, status_entitles
from ..types import CustomerState, SubscriptionSnapshot, SubscriptionState
from .addons.sync import sync_addon_grants, sync_addon_items
from .entitlements.resets import reanchor_entitlements, reset_for_new_period
from .entitlements.sync import refresh_entitlements, sync_entitlements
from .locking import atomic_with_retry, lock_customer, lock_customer_entitlements
from .metering.visibility import overage_this_period


def get_or_create_customer(owner: Any) -> BillingCustomer:
    """The owner's billing customer, created on the default plan on first use."""
    customer = get_customer(owner)
    if customer is not None:
        return customer
    owner_type_id, owner_id = owner_ref(owner)
    try:
        with transaction.atomic():
            customer = BillingCustomer.objects.create(
                owner_type_id=owner_type_id, owner_id=owner_id, plan=default_plan()
            )
            sync_entitlements(customer)
    except IntegrityError:
        # Another request created it first: the unique (owner_type, owner_id) says so.
        customer = BillingCustomer.objects.select_related("plan").get(
            owner_type_id=owner_type_id, owner_id=owner_id
        )
    return customer


def resolve_plan(snapshot: SubscriptionSnapshot | None) -> Plan | None:
    """Plan from the subscription's mapped prices when its status entitles, else default."""
    if snapshot is not None and status_entitles(snapshot.status):
        plan = plan_for_prices(snapshot.price_ids)
        if plan is not None:
            return plan
    return default_plan()


def set_plan(customer: BillingCustomer, plan: Plan | None) -> None:
    """Put ``customer`` on ``plan`` (None: no plan) and bring its entitlements in line.

    Usage is kept, as on a plan change. The next Stripe state applied to the customer
    (a webhook, a reconcile) decides the plan again; this is for tests and tools that
    run without Stripe (``kernia_billing.testing.override_plan``).
    """
    with transaction.atomic():
        locked = lock_customer(customer.pk)
        locked.plan = plan
        locked.save(update_fields=["plan", "updated_at"])
        sync_entitlements(locked)
    customer.refresh_from_db()


def apply_subscription(
    customer: BillingCustomer,
    snapshot: SubscriptionSnapshot | None,
    *,
    state_at: datetime | None = None,
) -> bool:
    """Make the customer reflect ``snapshot`` (None: no subscription). Idempotent.

    ``state_at`` is when Stripe produced this state (the event's ``created``);
    state older than what was already applied is ignored, so out-of-order
    deliveries never roll a customer back. Returns whether anything was applied.
    A new billing period resets ``billing`` entitlements exactly once. Follows the
    lock order in :mod:`.locking` and retries a deadlock when it owns the transaction.
    """
    applied = atomic_with_retry(lambda: _apply_locked(customer.pk, snapshot, state_at))
    if applied is None:
        customer.refresh_from_db()
        return False
    # The row as this transaction wrote it (nothing after the save writes the customer):
    # copied rather than read again.
    for field in BillingCustomer._meta.concrete_fields:
        setattr(customer, field.attname, getattr(applied, field.attname))
    customer.plan = applied.plan
    return True


def _apply_locked(
    customer_id: int, snapshot: SubscriptionSnapshot | None, state_at: datetime | None
) -> BillingCustomer | None:
    """The locked customer with ``snapshot`` applied, or None when it was stale."""
    locked = lock_customer(customer_id)
    if state_at is not None and locked.stripe_state_at and state_at < locked.stripe_state_at:
        return None
    lock_customer_entitlements(customer_id)
    previous_plan_id = locked.plan_id
    previous_status = locked.subscription_status
    previous_period_start = locked.current_period_start
    plan = resolve_plan(snapshot)

    if snapshot is None:
        locked.stripe_subscription_id = ""
        locked.subscription_status = ""
        locked.cancel_at_period_end = False
        locked.trial_end = None
        locked.seat_quantity = None
        locked.current_period_start = None
        locked.current_period_end = None
    else:
        if snapshot.stripe_customer_id and not locked.stripe_customer_id:
            locked.stripe_customer_id = snapshot.stripe_customer_id
        locked.stripe_subscription_id = snapshot.id
        locked.subscription_status = snapshot.status
        locked.current_period_start = snapshot.current_period_start
        locked.current_period_end = snapshot.current_period_end
        locked.billing_interval = snapshot.interval
        locked.billing_interval_count = snapshot.interval_count or 1
        locked.cancel_at_period_end = snapshot.cancel_at_period_end
        locked.trial_end = snapshot.trial_end
        locked.seat_quantity = snapshot.quantity
        locked.livemode = snapshot.livemode
    locked.plan = plan
    if state_at is not None:
        locked.stripe_state_at = state_at
    locked.save()

    period_start = snapshot.current_period_start if snapshot is not None else None
    if period_start != previous_period_start:
        if period_start and previous_period_start and period_start > previous_period_start:
            reset_for_new_period(locked, period_start)
        reanchor_entitlements(locked)
    addons = sync_addon_items(locked, snapshot)  # add-ons: before plan sync (seat limits)
    sync_entitlements(locked, addons=addons)
    if addons:
        sync_addon_grants(locked)

    if previous_plan_id != locked.plan_id or previous_status != locked.subscription_status:
        transaction.on_commit(
            lambda: signals.subscription_changed.send(
                sender=BillingCustomer,
                customer=locked,
                previous_plan_id=previous_plan_id,
                plan=locked.plan,
                status=locked.subscription_status,
            )
        )
    return locked


def customer_state(owner: Any) -> CustomerState:
    """Everything a billing page shows: subscription, plan, entitlements (resets applied)."""
    customer = get_or_create_customer(owner)
    entitlements = refresh_entitlements(customer)
    subscription = None
    if customer.stripe_subscription_id:
        subscription = SubscriptionState(
            id=customer.stripe_subscription_id,
            status=customer.subscription_status,
            current_period_start=customer.current_period_start,
            current_period_end=customer.current_period_end,
            cancel_at_period_end=customer.cancel_at_period_end,
            trial_end=customer.trial_end,
            seat_quantity=customer.seat_quantity,
        )
    return CustomerState(
        customer_id=customer.pk,
        stripe_customer_id=customer.stripe_customer_id,
        plan=customer.plan.key if customer.plan else None,
        plan_name=customer.plan.name if customer.plan else None,
        subscription=subscription,
        portal_available=bool(customer.stripe_customer_id),
        entitlements=tuple(entitlements),
        overage=overage_this_period(customer),  # metering
    )
