"""A renewal webhook, delivered several times at once, while the same customer tracks.

Regression for a PostgreSQL deadlock: the renewal locked the billing customer row
``FOR UPDATE`` and then its entitlements, while each track held its entitlement row and,
at COMMIT, the deferred foreign-key check of its ledger row asked for ``FOR KEY SHARE`` on
the same customer row. Every delivery must answer 200, every track must be answered
(accepted or refused for balance, never a 503), and the books must add up.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Sum
from django.test import Client

from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import BillingCustomer, Entitlement, UsageEvent
from kernia_billing.services import usage
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.testing import FakeStripe
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks, build_catalog, fake_now, make_webhooks
from tests.threads import run_concurrently, skip_unless_shared_database
from tests.webhooks.test_subscription_lifecycle import checkout

DELIVERIES = 4
TRACKS = 24


@pytest.fixture
def subscribed(
    transactional_db: None, fake_stripe: FakeStripe, stripe_settings: Any
) -> tuple[Any, str, Catalog, Webhooks]:
    skip_unless_shared_database()
    plans = build_catalog(fake_stripe)
    webhooks = make_webhooks(fake_stripe)
    user = UserFactory()
    client = Client()
    client.force_login(user)
    webhooks.deliver_pending()
    _, subscription_id = checkout(client, fake_stripe, plan="pro")
    webhooks.deliver_pending()
    return user, subscription_id, plans, webhooks


@pytest.mark.clock_matrix("today", "feb29-leap", "dec31-23:59:59")
def test_renewal_delivered_several_times_while_tracks_run(
    subscribed: tuple[Any, str, Catalog, Webhooks], fake_stripe: FakeStripe
) -> None:
    user, subscription_id, _, webhooks = subscribed
    usage.track(user, "messages", 990)
    fake_stripe.advance_subscription(subscription_id)
    renewal = webhooks.pending("customer.subscription.updated")[-1]
    others = [e for e in webhooks.pending() if e["id"] != renewal["id"]]
    after_renewal = fake_now(fake_stripe)

    def work(index: int) -> Any:
        if index < DELIVERIES:
            response = webhooks.post(renewal)
            return ("delivery", response.status_code)
        if index < DELIVERIES + len(others):
            return ("delivery", webhooks.post(others[index - DELIVERIES]).status_code)
        try:
            result = usage.track(user, "messages", 1, now=after_renewal)
        except InsufficientBalance:
            return ("refused", None)
        return ("tracked", result.event_id)

    results = run_concurrently(DELIVERIES + len(others) + TRACKS, work)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert [r for r in results if r[0] == "delivery" and r[1] != 200] == []
    tracked = [r for r in results if r[0] == "tracked"]
    # After the renewal the balance is a fresh 1000: every track of 1 fits.
    assert len(tracked) == TRACKS

    customer = BillingCustomer.objects.get(owner_id=str(user.pk))
    messages = Entitlement.objects.get(customer=customer, feature__key="messages")
    assert messages.period_start == customer.current_period_start
    in_period = UsageEvent.objects.filter(
        customer=customer, feature__key="messages", created_at__gte=messages.period_start
    ).aggregate(total=Sum("amount"))["total"]
    assert messages.usage == in_period == TRACKS
    assert audit_ledger() == []
