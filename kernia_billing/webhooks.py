"""dj-stripe webhook receivers. Each one re-reads state and calls one service.

They run inside dj-stripe's transaction, after (or before: no order is promised)
dj-stripe's own sync of the same event, so none of them trusts the payload or
dj-stripe's mirror: the services re-read the object from Stripe. Errors are not
caught: dj-stripe rolls its transaction back (including the Event row, so a
retry is processed again), answers 500, and Stripe retries. A duplicate
delivery never reaches us (dj-stripe answers it from the stored Event), and an
event older than the state a customer already applied is ignored.

``event.created`` is the time the state was true in Stripe (``state_at``).
"""

from __future__ import annotations

from typing import Any

from djstripe.event_handlers import djstripe_receiver
from djstripe.models import Event

from .services import catalog, stripe_state

SUBSCRIPTION_EVENTS = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
]
INVOICE_EVENTS = ["invoice.paid", "invoice.payment_failed"]
PRODUCT_EVENTS = ["product.created", "product.updated", "product.deleted"]
PRICE_EVENTS = ["price.created", "price.updated", "price.deleted"]
CHECKOUT_EVENTS = ["checkout.session.completed"]
CUSTOMER_EVENTS = ["customer.deleted"]
#: Every event type a receiver below handles: what ``kernia_register_webhook`` enables.
RECEIVED_EVENTS = sorted(
    {
        *SUBSCRIPTION_EVENTS,
        *INVOICE_EVENTS,
        *PRODUCT_EVENTS,
        *PRICE_EVENTS,
        *CHECKOUT_EVENTS,
        *CUSTOMER_EVENTS,
    }
)


def _object(event: Event) -> dict[str, Any]:
    return dict((event.data or {}).get("object") or {})


def _api_key(event: Event) -> str | None:
    return getattr(event, "default_api_key", None) or None


def _sync_subscription(event: Event, subscription_id: str | None) -> None:
    """Re-read the subscription from Stripe and apply it as of ``event.created``."""
    if not subscription_id:
        return
    stripe_state.sync_subscription_from_stripe(
        subscription_id,
        state_at=event.created,
        stripe_customer_id=stripe_state.stripe_id(_object(event).get("customer")),
        api_key=_api_key(event),
    )


@djstripe_receiver(SUBSCRIPTION_EVENTS)
def on_subscription_event(sender: Any, event: Event, **kwargs: Any) -> None:
    _sync_subscription(event, stripe_state.stripe_id(_object(event).get("id")))


@djstripe_receiver(INVOICE_EVENTS)
def on_invoice_event(sender: Any, event: Event, **kwargs: Any) -> None:
    _sync_subscription(event, stripe_state.invoice_subscription_id(_object(event)))


@djstripe_receiver(CHECKOUT_EVENTS)
def on_checkout_completed(sender: Any, event: Event, **kwargs: Any) -> None:
    _sync_subscription(event, stripe_state.stripe_id(_object(event).get("subscription")))


@djstripe_receiver(CUSTOMER_EVENTS)
def on_customer_deleted(sender: Any, event: Event, **kwargs: Any) -> None:
    stripe_state.detach_stripe_customer(
        stripe_state.stripe_id(_object(event).get("id")), state_at=event.created
    )


@djstripe_receiver(PRODUCT_EVENTS)
def on_product_event(sender: Any, event: Event, **kwargs: Any) -> None:
    data = _object(event)
    if event.type == "product.deleted":
        catalog.apply_stripe_product(data, deleted=True)
        return
    catalog.apply_stripe_product(
        stripe_state.retrieve("product", str(data["id"]), api_key=_api_key(event))
    )


@djstripe_receiver(PRICE_EVENTS)
def on_price_event(sender: Any, event: Event, **kwargs: Any) -> None:
    data = _object(event)
    if event.type == "price.deleted":
        catalog.apply_stripe_price(data, deleted=True)
        return
    catalog.apply_stripe_price(
        stripe_state.retrieve("price", str(data["id"]), api_key=_api_key(event))
    )
