"""Plan -> entitlements: a customer's entitlements follow its plan's plan features."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from ... import signals
from ...conf import billing_settings
from ...models import (
    BillingCustomer,
    Entitlement,
    PlanFeature,
)
from ...models.catalog import ResetPeriod
from ...selectors import default_plan, status_entitles
from ...types import EntitlementState
from ..addons.sync import addon_limits
from ..grants.expiry import current
from ..grants.totals import breakdown
from ..locking import lock_customer
from ..reservations.giveback import follow_period
from .resets import current_period
from .rows import _select_many

# --- plan -> entitlements ----------------------------------------------------------------


def sync_entitlements(
    customer: BillingCustomer, *, now: datetime | None = None, addons: bool = True
) -> list[str]:
    """Make the customer's entitlements follow its plan's plan features.

    Usage in the current period is kept (an upgrade from 100 to 1000 with 80
    used leaves 920); features the plan no longer grants are kept with
    ``granted=False`` so a re-upgrade in the same period finds its usage.
    Idempotent: nothing is written when nothing changed. Returns changed keys.
    ``addons=False``: the caller knows the customer has no add-on items (not read).
    """
    now = now or timezone.now()
    plan_features = (
        list(PlanFeature.objects.filter(plan_id=customer.plan_id).select_related("feature"))
        if customer.plan_id
        else []
    )
    existing = {e.feature_id: e for e in Entitlement.objects.filter(customer=customer)}
    changed: list[str] = []
    extra = addon_limits(customer) if plan_features and addons else {}  # seats, quantities
    for plan_feature in plan_features:
        included = plan_feature.included
        if plan_feature.included_from_quantity and customer.seat_quantity is not None:
            included = customer.seat_quantity
        included += extra.get(plan_feature.feature_id, 0)
        wanted = {
            "granted": True,
            "included": included,
            "unlimited": plan_feature.unlimited,
            "allow_overage": plan_feature.allow_overage,
            "reset_period": plan_feature.reset_period,
            "rollover_max": plan_feature.rollover_max,
            "rollover_expires_after": plan_feature.rollover_expires_after,
        }
        current = existing.get(plan_feature.feature_id)
        if current is None:
            anchor, start, end = current_period(plan_feature.reset_period, customer, now)
            try:
                with transaction.atomic():
                    Entitlement.objects.create(
                        customer=customer,
                        feature_id=plan_feature.feature_id,
                        reset_anchor=anchor,
                        period_start=start,
                        next_reset_at=end,
                        **wanted,
                    )
            except IntegrityError:
                continue  # created concurrently by another sync of the same plan
            changed.append(plan_feature.feature.key)
            continue
        updates = {k: v for k, v in wanted.items() if getattr(current, k) != v}
        if current.reset_period != plan_feature.reset_period or (
            plan_feature.reset_period != ResetPeriod.NONE and current.period_start is None
        ):
            anchor, start, end = current_period(plan_feature.reset_period, customer, now)
            updates.update(reset_anchor=anchor, period_start=start, next_reset_at=end)
        if updates:
            with transaction.atomic():
                # update(), never save(): usage is not ours to overwrite here.
                Entitlement.objects.filter(pk=current.pk).update(**updates, updated_at=now)
                if "period_start" in updates:
                    follow_period(current.pk, current.period_start, start)
            changed.append(plan_feature.feature.key)
    granted_ids = {pf.feature_id for pf in plan_features}
    revoked = [e for fid, e in existing.items() if fid not in granted_ids and e.granted]
    if revoked:
        Entitlement.objects.filter(pk__in=[e.pk for e in revoked]).update(
            granted=False, updated_at=now
        )
        changed.extend(e.feature.key for e in revoked)
    if changed:
        transaction.on_commit(
            lambda: signals.entitlement_changed.send(
                sender=Entitlement, customer=customer, features=tuple(changed)
            )
        )
    return changed


def sync_plan_customers(plan_ids: Iterable[int]) -> int:
    """After plans were edited: re-sync their customers' entitlements, and move customers
    without an entitling subscription onto the (possibly new) default plan."""
    count = 0
    for customer in BillingCustomer.objects.filter(plan_id__in=list(plan_ids)):
        sync_entitlements(customer)
        count += 1
    return count + apply_default_plan()


def refresh_entitlements(
    customer: BillingCustomer, *, now: datetime | None = None
) -> list[EntitlementState]:
    """The customer's granted entitlements, with due resets and expiries applied."""
    now = now or timezone.now()
    states = []
    rows = _select_many("c.id = %s AND e.granted = %s", [customer.pk, True])
    for row in sorted(rows, key=lambda r: r.feature):
        entitlement = current(row, now)
        states.append(
            EntitlementState(
                feature=entitlement.feature,
                name=entitlement.feature_name,
                kind=entitlement.kind,
                granted=entitlement.granted,
                included=entitlement.included,
                usage=entitlement.usage,
                balance=entitlement.balance,
                unlimited=entitlement.unlimited,
                allow_overage=entitlement.allow_overage,
                reset_period=entitlement.reset_period,
                period_start=entitlement.period_start,
                next_reset_at=entitlement.next_reset_at,
                next_expiry=entitlement.grant_next_expiry,
                grants=breakdown(entitlement, now),
            )
        )
    return states


def apply_default_plan() -> int:
    """Put every customer without an entitling subscription on the current default plan.

    Called after plans change (a new default, a default switched or deactivated), so
    such customers follow at once. Returns how many customers moved.
    """
    plan = default_plan()
    stale = BillingCustomer.objects.exclude(
        subscription_status__in=billing_settings.ENTITLING_STATUSES
    )
    stale = stale.exclude(plan=plan) if plan is not None else stale.exclude(plan=None)
    moved = 0
    for customer_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            customer = lock_customer(customer_id)
            if status_entitles(customer.subscription_status) or customer.plan_id == (
                plan.pk if plan else None
            ):
                continue
            customer.plan = plan
            customer.save(update_fields=["plan", "updated_at"])
            sync_entitlements(customer)
            moved += 1
    return moved
