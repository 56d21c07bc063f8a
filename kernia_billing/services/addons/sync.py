"""Subscription items of add-on prices -> add-on items, grants and seat limits.

Runs inside :func:`~kernia_billing.services.customers.apply_subscription`, under the
customer's lock (step 1 of :mod:`kernia_billing.services.locking`), every time a
subscription state is applied (webhook, checkout return, ``kernia_reconcile --fix``,
``POST billing/addons``). Idempotent: applying the same state twice changes nothing.

For each add-on item and each consumable feature of its add-on there is one grant
per billing period (``reset_period="billing"``; idempotency key
``addon:<item>:<feature>:<period start>``, expiring at the period's end, so what is
left "resets") or one for the item's life (``"none"``). The grant's ``amount -
revoked`` follows ``amount_per_unit x quantity``: a higher quantity adds to
``amount``, a lower one revokes unconsumed amount (what was consumed stays consumed);
an item that left the subscription, or a subscription that stopped entitling, has
what is left of its grants revoked. Seats and quantities are not granted: the
add-on raises the entitlement's limit (:func:`addon_limits`, read by plan sync).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ...models import (
    CONSUMABLE_KINDS,
    AddOnFeature,
    AddOnItem,
    AddOnPrice,
    AddOnReset,
    BillingCustomer,
    Entitlement,
    Grant,
    GrantSource,
)
from ...selectors import status_entitles
from ...types import SubscriptionSnapshot
from ..grants.totals import REMAINING, lock_entitlement, refresh_totals


def sync_addon_items(customer: BillingCustomer, snapshot: SubscriptionSnapshot | None) -> bool:
    """Mirror the add-on items of ``snapshot`` (customer locked). Returns whether the
    customer has any add-on item now (active or not): without one, plan sync and
    :func:`sync_addon_grants` have nothing of add-ons to read."""
    entitles = snapshot is not None and status_entitles(snapshot.status)
    items = list(snapshot.items) if snapshot is not None and entitles else []
    prices = AddOnPrice.objects.filter(price__stripe_id__in=[i.price_id for i in items])
    mapped = (
        {m.price.stripe_id: m.addon_id for m in prices.select_related("price")} if items else {}
    )
    seen: set[str] = set()
    existing = {
        a.stripe_subscription_item_id: a for a in AddOnItem.objects.filter(customer=customer)
    }
    for item in items:
        addon_id = mapped.get(item.price_id)
        if addon_id is None:
            continue
        seen.add(item.id)
        wanted = {
            "addon_id": addon_id,
            "stripe_price_id": item.price_id,
            "quantity": item.quantity,
            "current_period_start": item.current_period_start,
            "current_period_end": item.current_period_end,
            "active": True,
        }
        row = existing.get(item.id)
        if row is None:
            AddOnItem.objects.create(
                customer=customer, stripe_subscription_item_id=item.id, **wanted
            )
        elif any(getattr(row, k) != v for k, v in wanted.items()):
            AddOnItem.objects.filter(pk=row.pk).update(**wanted, updated_at=timezone.now())
    gone = [row.pk for key, row in existing.items() if key not in seen and row.active]
    if gone:
        AddOnItem.objects.filter(pk__in=gone).update(active=False, updated_at=timezone.now())
    return bool(existing or seen)


def addon_limits(customer: BillingCustomer) -> dict[int, int]:
    """Feature id -> what active add-on items add to a seats/quantity limit."""
    extra: dict[int, int] = defaultdict(int)
    items = AddOnItem.objects.filter(customer=customer, active=True)
    quantities: dict[int, int] = defaultdict(int)
    for addon_id, quantity in items.values_list("addon_id", "quantity"):
        quantities[addon_id] += quantity
    if not quantities:
        return {}
    features = AddOnFeature.objects.filter(addon_id__in=list(quantities)).exclude(
        feature__kind__in=list(CONSUMABLE_KINDS)
    )
    for addon_id, feature_id, amount in features.values_list("addon_id", "feature_id", "amount"):
        extra[feature_id] += amount * quantities[addon_id]
    return dict(extra)


def _grant_key(item: AddOnItem, feature_key: str, reset: str) -> str:
    if reset == AddOnReset.NONE or item.current_period_start is None:
        return f"addon:{item.stripe_subscription_item_id}:{feature_key}"
    start = int(item.current_period_start.timestamp())
    return f"addon:{item.stripe_subscription_item_id}:{feature_key}:{start}"


def sync_addon_grants(customer: BillingCustomer, *, now: datetime | None = None) -> int:
    """Make the add-on grants follow the add-on items (customer locked). Returns writes."""
    now = now or timezone.now()
    items = list(AddOnItem.objects.filter(customer=customer).select_related("addon"))
    if not items:
        return 0
    features_of: dict[int, list[AddOnFeature]] = defaultdict(list)
    for af in AddOnFeature.objects.filter(
        addon_id__in={i.addon_id for i in items}, feature__kind__in=list(CONSUMABLE_KINDS)
    ).select_related("feature"):
        features_of[af.addon_id].append(af)
    # (feature id) -> [(item, addon feature)] that want a grant now.
    wanted: dict[int, list[tuple[AddOnItem, AddOnFeature]]] = defaultdict(list)
    for item in items:
        if item.active:
            for af in features_of[item.addon_id]:
                wanted[af.feature_id].append((item, af))
    live_addon = Grant.objects.filter(customer=customer, source=GrantSource.ADDON).annotate(
        left=REMAINING
    )
    inactive_ids = [i.stripe_subscription_item_id for i in items if not i.active]
    to_revoke = set(
        live_addon.filter(stripe_subscription_item_id__in=inactive_ids, left__gt=0).values_list(
            "feature_id", flat=True
        )
    )
    feature_ids = sorted(set(wanted) | to_revoke)
    entitlements = {
        fid: Entitlement.objects.get_or_create(
            customer=customer, feature_id=fid, defaults={"granted": False}
        )[0].pk
        for fid in feature_ids
    }
    writes = 0
    # Lock order: entitlements ascending id, then their grants.
    for feature_id, entitlement_id in sorted(entitlements.items(), key=lambda kv: kv[1]):
        row = lock_entitlement(entitlement_id)
        grants = {
            g.idempotency_key: g
            for g in Grant.objects.filter(
                customer=customer, feature_id=feature_id, source=GrantSource.ADDON
            )
            .order_by("pk")
            .select_for_update()
        }
        for g in grants.values():
            if g.stripe_subscription_item_id in inactive_ids and g.remaining > 0:
                expired = g.expires_at is not None and g.expires_at <= now
                field = "expired" if expired else "revoked"
                Grant.objects.filter(pk=g.pk).update(**{field: F(field) + g.remaining})
                if not expired:
                    Grant.objects.filter(pk=g.pk).update(revoked_at=now)
                writes += 1
        for item, af in wanted.get(feature_id, []):
            writes += _follow(customer, item, af, grants, now)
            writes += _end_past_periods(item, af, grants, now)
        refresh_totals(row.id, row.customer_id, row.feature_id)
    return writes


def _end_past_periods(
    item: AddOnItem, af: AddOnFeature, grants: dict[str | None, Grant], now: datetime
) -> int:
    """A renewal reached us: what is left of the item's earlier periods expires now.

    Stripe's new period may begin before our clock reaches the old period's end (the
    renewal webhook comes first); the old grant then ends now, as the plan's grant
    resets now (its draws all came before now, so the audit's expiry rule holds).
    """
    if item.addon.reset_period != AddOnReset.BILLING:
        return 0
    current = _grant_key(item, af.feature.key, item.addon.reset_period)
    ended = 0
    for key, g in grants.items():
        if (
            key != current
            and g.resets
            and g.stripe_subscription_item_id == item.stripe_subscription_item_id
            and g.remaining > 0
            and (g.expires_at is None or g.expires_at > now)
        ):
            Grant.objects.filter(pk=g.pk).update(expired=F("expired") + g.remaining, expires_at=now)
            ended += 1
    return ended


def _follow(
    customer: BillingCustomer,
    item: AddOnItem,
    af: AddOnFeature,
    grants: dict[str | None, Grant],
    now: datetime,
) -> int:
    """Create or adjust the current grant of one (item, feature) to ``amount x quantity``."""
    reset = item.addon.reset_period
    expires_at = item.current_period_end if reset == AddOnReset.BILLING else None
    if expires_at is not None and expires_at <= now:
        return 0  # the period already ended; the renewal's state brings the next one
    target = af.amount * item.quantity
    key = _grant_key(item, af.feature.key, reset)
    current = grants.get(key)
    details = {"quantity": item.quantity, "perUnit": af.amount, "addon": item.addon.key}
    if current is None:
        if target <= 0:
            return 0
        with transaction.atomic():
            Grant.objects.create(
                customer=customer,
                feature_id=af.feature_id,
                source=GrantSource.ADDON,
                amount=target,
                expires_at=expires_at,
                resets=reset == AddOnReset.BILLING,
                reason=f"Add-on {item.addon.name}",
                idempotency_key=key,
                stripe_price_id=item.stripe_price_id,
                stripe_subscription_item_id=item.stripe_subscription_item_id,
                details=details,
                created_at=now,
            )
        return 1
    entitled = current.amount - current.revoked
    if target == entitled:
        return 0
    if target > entitled:
        Grant.objects.filter(pk=current.pk).update(
            amount=F("amount") + (target - entitled), details=details
        )
    else:
        cut = min(entitled - target, current.remaining)
        Grant.objects.filter(pk=current.pk).update(revoked=F("revoked") + cut, details=details)
    return 1
