"""Add, change or remove an add-on on the owner's subscription, through Stripe.

``set_addon(owner, price, quantity)``: the price must be an approved, active,
recurring price mapped to an active add-on. With no item of that price on the
subscription, ``POST /v1/subscription_items`` adds one; with one, its quantity is
updated (``POST /v1/subscription_items/{id}``), or it is removed
(``DELETE /v1/subscription_items/{id}``) for quantity 0. Stripe prorates as the
account is configured (``proration_behavior`` is Stripe's default). The subscription
is then re-read from Stripe and applied at once (the webhooks that follow change
nothing), like the return from checkout.
"""

from __future__ import annotations

from typing import Any

from ...exceptions import InvalidRequest, NoStripeCustomer
from ...models import AddOnItem, AddOnPrice, ReviewState
from ...selectors import get_customer, status_entitles
from .. import stripe_gateway
from ..stripe_state import sync_subscription_from_stripe

MAX_QUANTITY = 10_000


def _addon_price(price: str) -> AddOnPrice:
    mapping = (
        AddOnPrice.objects.filter(
            price__stripe_id=price,
            addon__active=True,
            price__review_state=ReviewState.APPROVED,
            price__active=True,
            price__deleted_in_stripe=False,
            price__price_type="recurring",
        )
        .select_related("addon", "price")
        .first()
    )
    if mapping is None:
        raise InvalidRequest(
            "This price does not sell an add-on: it is unknown, not approved, archived, not "
            "recurring, or not mapped to an active add-on.",
            fields={"price": price},
        )
    return mapping


def set_addon(
    owner: Any, price: str, quantity: int, *, api_key: str | None = None
) -> list[AddOnItem]:
    """Put ``quantity`` of the add-on ``price`` sells on the owner's subscription."""
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not (0 <= quantity <= MAX_QUANTITY)
    ):
        raise InvalidRequest(
            f"quantity must be an integer from 0 to {MAX_QUANTITY}.",
            fields={"quantity": f"From 0 to {MAX_QUANTITY}."},
        )
    mapping = _addon_price(price)
    customer = get_customer(owner)
    if customer is None or not customer.stripe_customer_id:
        raise NoStripeCustomer()
    if not customer.stripe_subscription_id or not status_entitles(customer.subscription_status):
        raise InvalidRequest(
            "Add-ons go on a subscription: subscribe to a plan first.",
            fields={"price": price},
        )
    subscription_id = customer.stripe_subscription_id
    remote = stripe_gateway.retrieve("subscription", subscription_id, api_key=api_key)
    items = (remote.get("items") or {}).get("data") or []
    current = next(
        (i for i in items if (i.get("price") or {}).get("id") == mapping.price.stripe_id), None
    )
    # Stable keys: a retry after a lost answer changes nothing twice.
    key = f"kernia-addon-{customer.pk}-{subscription_id}-{price}-{quantity}"
    if current is None and quantity > 0:
        stripe_gateway.create(
            "subscription_item",
            api_key=api_key,
            idempotency_key=f"{key}-create",
            subscription=subscription_id,
            price=mapping.price.stripe_id,
            quantity=quantity,
        )
    elif current is not None and quantity == 0:
        stripe_gateway.delete("subscription_item", str(current["id"]), api_key=api_key)
    elif current is not None and int(current.get("quantity") or 0) != quantity:
        stripe_gateway.modify(
            "subscription_item",
            str(current["id"]),
            api_key=api_key,
            idempotency_key=f"{key}-{current['id']}",
            quantity=quantity,
        )
    sync_subscription_from_stripe(subscription_id, state_at=None, api_key=api_key)
    return list(
        AddOnItem.objects.filter(customer=customer, active=True)
        .select_related("addon")
        .order_by("pk")
    )


def owner_addons(owner: Any) -> list[AddOnItem]:
    """The add-on items currently on the owner's subscription."""
    customer = get_customer(owner)
    if customer is None:
        return []
    return list(
        AddOnItem.objects.filter(customer=customer, active=True)
        .select_related("addon")
        .order_by("pk")
    )
