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

from collections.abc import Callable
from typing import Any

from djstripe.event_handlers import djstripe_receiver
from djstripe.models import Event

from .services import catalog, stripe_gateway, stripe_state, subscriptions
from .services.metering.period_close import flush_before_invoice
from .services.topups.fulfil import fulfil_session_id
from .services.topups.refunds import apply_charge_refund


def _object(event: Event) -> dict[str, Any]:
    return dict((event.data or {}).get("object") or {})


def _sync_subscription(event: Event, subscription_id: str | None) -> None:
    """Re-read the subscription from Stripe and apply it as of ``event.created``."""
    if not subscription_id:
        return
    stripe_state.sync_subscription_from_stripe(
        subscription_id,
        state_at=event.created,
        stripe_customer_id=stripe_state.stripe_id(_object(event).get("customer")),
        api_key=stripe_gateway.api_key_for(event=event),
    )


def on_subscription(event: Event) -> None:
    _sync_subscription(event, stripe_state.stripe_id(_object(event).get("id")))


def on_invoice(event: Event) -> None:
    _sync_subscription(event, stripe_state.invoice_subscription_id(_object(event)))


def on_invoice_created(event: Event) -> None:
    flush_before_invoice(_object(event))  # metering: the period's usage first


def on_checkout_completed(event: Event) -> None:
    data = _object(event)
    _sync_subscription(event, stripe_state.stripe_id(data.get("subscription")))
    if data.get("mode") == "payment" and data.get("id"):  # top-ups: re-read, grant once
        fulfil_session_id(str(data["id"]), api_key=stripe_gateway.api_key_for(event=event))


def on_charge_refunded(event: Event) -> None:
    charge_id = stripe_state.stripe_id(_object(event).get("id"))
    if charge_id:  # top-ups: a full refund revokes what is left
        apply_charge_refund(charge_id, api_key=stripe_gateway.api_key_for(event=event))


def on_trial_will_end(event: Event) -> None:
    """Apply the subscription, then tell host code (``signals.trial_will_end``)."""
    _sync_subscription(event, stripe_state.stripe_id(_object(event).get("id")))
    subscriptions.notify_trial_will_end(_object(event))


def on_customer_deleted(event: Event) -> None:
    stripe_state.detach_stripe_customer(
        stripe_state.stripe_id(_object(event).get("id")), state_at=event.created
    )


def on_product(event: Event) -> None:
    data = _object(event)
    if event.type == "product.deleted":
        catalog.apply_stripe_product(data, deleted=True)
        return
    key = stripe_gateway.api_key_for(event=event)
    catalog.apply_stripe_product(stripe_gateway.retrieve("product", str(data["id"]), api_key=key))


def on_price(event: Event) -> None:
    data = _object(event)
    if event.type == "price.deleted":
        catalog.apply_stripe_price(data, deleted=True)
        return
    key = stripe_gateway.api_key_for(event=event)
    catalog.apply_stripe_price(stripe_gateway.retrieve("price", str(data["id"]), api_key=key))


#: Event type -> the one handler that deals with it.
HANDLERS: dict[str, Callable[[Event], None]] = {
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "customer.subscription.paused": on_subscription,
    "customer.subscription.resumed": on_subscription,
    "customer.subscription.trial_will_end": on_trial_will_end,
    "invoice.created": on_invoice_created,
    "invoice.paid": on_invoice,
    "invoice.payment_failed": on_invoice,
    "checkout.session.completed": on_checkout_completed,
    "charge.refunded": on_charge_refunded,
    "customer.deleted": on_customer_deleted,
    "product.created": on_product,
    "product.updated": on_product,
    "product.deleted": on_product,
    "price.created": on_price,
    "price.updated": on_price,
    "price.deleted": on_price,
}

#: Every event type a receiver handles: what ``kernia_register_webhook`` enables.
RECEIVED_EVENTS = sorted(HANDLERS)


@djstripe_receiver(list(HANDLERS))
def receive(sender: Any, event: Event, **kwargs: Any) -> None:
    """dj-stripe's one receiver for every event type in :data:`HANDLERS`."""
    HANDLERS[event.type](event)
