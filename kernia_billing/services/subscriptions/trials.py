"""Trials: Stripe's ``customer.subscription.trial_will_end`` -> ``signals.trial_will_end``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from ... import signals
from ...models import BillingCustomer
from ..stripe_state import stripe_id, timestamp


def notify_trial_will_end(subscription: Mapping[str, Any]) -> bool:
    """Send ``trial_will_end(sender, customer, trial_end)`` after commit, for our customer
    of this subscription (Stripe sends the event once per trial). Returns whether sent."""
    customer = BillingCustomer.objects.filter(
        stripe_customer_id=stripe_id(subscription.get("customer"))
    ).first()
    if customer is None:
        return False
    trial_end = timestamp(subscription.get("trial_end"))
    transaction.on_commit(
        lambda: signals.trial_will_end.send(
            sender=BillingCustomer, customer=customer, trial_end=trial_end
        )
    )
    return True
