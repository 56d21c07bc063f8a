"""Stripe subscription state -> billing customers.

Webhooks are notifications, not state: every door here re-reads the subscription
from Stripe (dj-stripe's own receivers run in no guaranteed order relative to
ours, and event payloads may be rendered in another API version), parses it into
a :class:`~kernia_billing.types.SubscriptionSnapshot` and hands it
to :func:`~kernia_billing.services.customers.apply_subscription`.

Parsing never uses dj-stripe's ``Subscription.is_valid()``,
``has_any_active_subscription()`` or ``current_period_*`` (dj-stripe #2196):
from API 2025-03-31 the period boundaries live on the subscription items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from ..models import BillingCustomer, PlanPrice
from ..selectors import status_entitles
from ..types import SubscriptionItemSnapshot, SubscriptionSnapshot
from . import stripe_gateway
from .customers import apply_subscription, get_or_create_customer

logger = logging.getLogger(__name__)

#: Metadata keys kernia writes on the Stripe customer (and checkout subscription).
OWNER_TYPE_KEY = "kernia_owner_type"
OWNER_ID_KEY = "kernia_owner_id"
CUSTOMER_ID_KEY = "kernia_customer_id"

ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})


# --- plain data ------------------------------------------------------------------------


def stripe_id(value: Any) -> str:
    """An id from a reference that may be an id or an expanded object."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def timestamp(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _items(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = data.get("items")
    if isinstance(items, Mapping):
        items = items.get("data")
    return [dict(item) for item in items or [] if isinstance(item, Mapping)]


def _item_price(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item's price, falling back to its legacy ``plan`` (same id on old API versions)."""
    price = item.get("price")
    if isinstance(price, Mapping):
        return dict(price)
    plan = item.get("plan")
    if isinstance(plan, Mapping):
        return {
            "id": plan.get("id"),
            "recurring": {
                "interval": plan.get("interval"),
                "interval_count": plan.get("interval_count"),
            },
        }
    return {"id": stripe_id(price)}


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str:
    """An invoice's subscription: ``parent.subscription_details`` (API >= 2025-03-31),
    else the legacy top-level ``subscription``."""
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return stripe_id(details.get("subscription") or invoice.get("subscription"))


def _mapped_price_ids(price_ids: Iterable[str]) -> list[str]:
    """Of ``price_ids``, those mapped to a plan, best plan first (as ``plan_for_prices``)."""
    rows = (
        PlanPrice.objects.filter(price__stripe_id__in=list(price_ids))
        .order_by("-plan__display_order", "plan__key")
        .values_list("price__stripe_id", flat=True)
    )
    return list(rows)


# --- parsing ---------------------------------------------------------------------------


def snapshot_from_stripe(subscription: Any) -> SubscriptionSnapshot:
    """Parse a Stripe subscription (dict or StripeObject, any API version).

    - Price ids: every item's price (legacy ``plan`` on old versions).
    - The *primary* item is the one whose price maps to the customer's plan (else the
      first item); its quantity is the seat quantity, its price's ``recurring`` the
      billing interval, and its ``current_period_start/end`` the period boundaries
      (API >= 2025-03-31), falling back to the subscription's own fields.
    - ``cancel_at_period_end`` is also true when ``cancel_at`` falls within the current
      period: newer dashboards schedule "cancel at period end" that way.
    """
    data = stripe_gateway.plain(subscription)
    items = _items(data)
    price_ids = tuple(pid for pid in (stripe_id(_item_price(i).get("id")) for i in items) if pid)
    mapped = _mapped_price_ids(price_ids)
    primary = None
    if mapped:
        primary = next(i for i in items if stripe_id(_item_price(i).get("id")) == mapped[0])
    elif items:
        primary = items[0]

    period_start = period_end = None
    if primary is not None:
        period_start = timestamp(primary.get("current_period_start"))
        period_end = timestamp(primary.get("current_period_end"))
    if period_start is None:
        period_start = timestamp(data.get("current_period_start"))
    if period_end is None:
        period_end = timestamp(data.get("current_period_end"))

    interval, interval_count = "", 1
    quantity = None
    if primary is not None:
        recurring = _item_price(primary).get("recurring") or {}
        interval = str(recurring.get("interval") or "")
        interval_count = int(recurring.get("interval_count") or 1)
        if mapped and primary.get("quantity") is not None:
            quantity = int(primary["quantity"])

    cancel_at = timestamp(data.get("cancel_at"))
    cancel_at_period_end = bool(data.get("cancel_at_period_end")) or (
        cancel_at is not None
        and data.get("status") not in ENDED_STATUSES
        and (period_end is None or cancel_at <= period_end)
    )
    return SubscriptionSnapshot(
        id=str(data["id"]),
        stripe_customer_id=stripe_id(data.get("customer")),
        status=str(data.get("status") or ""),
        price_ids=price_ids,
        current_period_start=period_start,
        current_period_end=period_end,
        interval=interval,
        interval_count=interval_count,
        cancel_at_period_end=cancel_at_period_end,
        trial_end=timestamp(data.get("trial_end")),
        quantity=quantity,
        livemode=bool(data.get("livemode")),
        items=tuple(
            SubscriptionItemSnapshot(
                id=stripe_id(item.get("id")),
                price_id=stripe_id(_item_price(item).get("id")),
                quantity=int(item.get("quantity") or 0),
                current_period_start=timestamp(item.get("current_period_start")) or period_start,
                current_period_end=timestamp(item.get("current_period_end")) or period_end,
            )
            for item in items
            if item.get("id")
        ),
    )


def _rank(snapshot: SubscriptionSnapshot) -> int:
    if snapshot.status in ENDED_STATUSES:
        return 3
    if status_entitles(snapshot.status):
        return 0 if _mapped_price_ids(snapshot.price_ids) else 1
    return 2


def pick_subscription(subscriptions: Iterable[Any]) -> SubscriptionSnapshot | None:
    """The subscription that decides a customer's plan when it has several.

    Entitling and mapped to a plan first, then entitling, then still open (e.g.
    ``incomplete``, ``unpaid``, ``paused``), then ended; the newest wins a tie.
    """
    parsed = [
        (snapshot_from_stripe(data), -int(data.get("created") or 0))
        for data in map(stripe_gateway.plain, subscriptions)
    ]
    if len(parsed) <= 1:  # nothing to rank (a renewal's usual case: no query for it)
        return parsed[0][0] if parsed else None
    return min(parsed, key=lambda c: (_rank(c[0]), c[1]))[0]


# --- who is it? ------------------------------------------------------------------------


def owner_metadata(customer: BillingCustomer) -> dict[str, str]:
    """Metadata that links a Stripe customer back to its owner."""
    content_type = ContentType.objects.get_for_id(customer.owner_type_id)
    return {
        OWNER_TYPE_KEY: f"{content_type.app_label}.{content_type.model}",
        OWNER_ID_KEY: str(customer.owner_id),
        CUSTOMER_ID_KEY: str(customer.pk),
    }


def _customer_from_metadata(metadata: Mapping[str, Any] | None) -> BillingCustomer | None:
    if not metadata:
        return None
    label, owner_id = metadata.get(OWNER_TYPE_KEY), metadata.get(OWNER_ID_KEY)
    if not label or not owner_id or "." not in str(label):
        return None
    app_label, model = str(label).split(".", 1)
    content_type = ContentType.objects.filter(app_label=app_label, model=model.lower()).first()
    if content_type is None:
        return None
    customer = BillingCustomer.objects.filter(
        owner_type=content_type, owner_id=str(owner_id)
    ).first()
    if customer is not None:
        return customer
    model_class = content_type.model_class()
    if model_class is None:
        return None
    owner = model_class._default_manager.filter(pk=owner_id).first()
    return get_or_create_customer(owner) if owner is not None else None


def find_customer(
    stripe_customer_id: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    api_key: str | None = None,
) -> BillingCustomer | None:
    """The billing customer of a Stripe customer: by id, else by owner metadata.

    Metadata is looked for in ``metadata`` (e.g. the subscription's), then on the
    Stripe customer itself; a deleted Stripe customer links to nobody. A customer
    found by metadata is linked to the Stripe customer unless it is already linked
    to another one (logged, never silently re-pointed).
    """
    if not stripe_customer_id:
        return None
    found = BillingCustomer.objects.filter(stripe_customer_id=stripe_customer_id).first()
    if found is not None:
        return found
    # A deleted Stripe customer must not be linked again by a late event.
    remote = stripe_gateway.retrieve("customer", stripe_customer_id, api_key=api_key)
    if remote.get("deleted"):
        return None
    customer = _customer_from_metadata(metadata) or _customer_from_metadata(remote.get("metadata"))
    if customer is None:
        return None
    if customer.stripe_customer_id and customer.stripe_customer_id != stripe_customer_id:
        logger.warning(
            "Stripe customer %s names billing customer %s, which is linked to %s; ignored.",
            stripe_customer_id,
            customer.pk,
            customer.stripe_customer_id,
        )
        return None
    BillingCustomer.objects.filter(pk=customer.pk, stripe_customer_id__isnull=True).update(
        stripe_customer_id=stripe_customer_id
    )
    customer.refresh_from_db()
    return customer if customer.stripe_customer_id == stripe_customer_id else None


# --- Stripe reads ----------------------------------------------------------------------


def list_customer_subscriptions(
    stripe_customer_id: str, *, api_key: str | None = None
) -> list[dict[str, Any]]:
    """Every subscription of a Stripe customer, ended ones included."""
    return list(
        stripe_gateway.list_all(
            "subscription", customer=stripe_customer_id, status="all", api_key=api_key
        )
    )


# --- services --------------------------------------------------------------------------


def sync_subscription_from_stripe(
    subscription_id: str,
    *,
    state_at: datetime | None,
    stripe_customer_id: str = "",
    api_key: str | None = None,
) -> BillingCustomer | None:
    """Re-read a subscription (and its customer's others) from Stripe and apply it.

    ``state_at`` is the event's ``created``: a customer that already applied newer
    state is left alone (without calling Stripe when ``stripe_customer_id``, from the
    event, names a known customer). With several subscriptions, the one
    :func:`pick_subscription` chooses decides the plan. Returns the customer, or None
    when the Stripe customer is not one of ours.
    """
    known = None
    if stripe_customer_id:
        known = BillingCustomer.objects.filter(stripe_customer_id=stripe_customer_id).first()
        if known is not None and _is_stale(known, state_at):
            return known
    subscription = stripe_gateway.retrieve("subscription", subscription_id, api_key=api_key)
    stripe_customer_id = stripe_id(subscription.get("customer"))
    customer = known  # found by the same lookup find_customer starts with: not repeated
    if customer is None or customer.stripe_customer_id != stripe_customer_id:
        customer = find_customer(
            stripe_customer_id, metadata=subscription.get("metadata"), api_key=api_key
        )
    if customer is None:
        logger.info("Subscription %s belongs to no billing customer; ignored.", subscription_id)
        return None
    if _is_stale(customer, state_at):
        return customer
    others = list_customer_subscriptions(stripe_customer_id, api_key=api_key)
    by_id = {sub["id"]: sub for sub in others}
    by_id[subscription["id"]] = subscription  # the freshest read wins
    apply_subscription(customer, pick_subscription(by_id.values()), state_at=state_at)
    return customer


def sync_customer_from_stripe(
    customer: BillingCustomer, *, state_at: datetime | None = None, api_key: str | None = None
) -> BillingCustomer:
    """Re-derive a customer's subscription state from all its Stripe subscriptions."""
    if not customer.stripe_customer_id:
        apply_subscription(customer, None, state_at=state_at)
        return customer
    subscriptions = list_customer_subscriptions(customer.stripe_customer_id, api_key=api_key)
    apply_subscription(customer, pick_subscription(subscriptions), state_at=state_at)
    return customer


def detach_stripe_customer(stripe_customer_id: str, *, state_at: datetime | None) -> bool:
    """The Stripe customer was deleted: back to the default plan, unlinked. Idempotent."""
    customer = BillingCustomer.objects.filter(stripe_customer_id=stripe_customer_id).first()
    if customer is None or _is_stale(customer, state_at):
        return False
    with transaction.atomic():
        apply_subscription(customer, None, state_at=state_at)
        BillingCustomer.objects.filter(pk=customer.pk).update(stripe_customer_id=None)
    return True


def _is_stale(customer: BillingCustomer, state_at: datetime | None) -> bool:
    return bool(
        state_at is not None
        and customer.stripe_state_at is not None
        and state_at < customer.stripe_state_at
    )
