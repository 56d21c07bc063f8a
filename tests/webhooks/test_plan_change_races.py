"""The API and the webhook apply the same plan change at the same time (real threads).

A monthly -> annual switch starts a new billing period: the API applies Stripe's answer
while the ``customer.subscription.updated`` webhook of the same change is delivered
(several times). Whichever comes second changes nothing: the period resets once, the
books add up, every delivery answers 200.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from kernia_billing.models import BillingCustomer, Entitlement
from kernia_billing.services import usage
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.testing import FakeStripe
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks, build_catalog, fake_now, make_webhooks
from tests.threads import run_concurrently, skip_unless_shared_database
from tests.webhooks.test_subscription_lifecycle import checkout

DELIVERERS = 3


@pytest.fixture
def subscribed(
    transactional_db: None, fake_stripe: FakeStripe, stripe_settings: Any
) -> tuple[Any, Client, Catalog, Webhooks]:
    skip_unless_shared_database()
    plans = build_catalog(fake_stripe)
    webhooks = make_webhooks(fake_stripe)
    user = UserFactory()
    client = Client()
    client.force_login(user)
    checkout(client, fake_stripe, plan="pro")
    webhooks.deliver_pending()
    return user, client, plans, webhooks


def _wait_for_update(fake: FakeStripe, seen: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = fake.events()[seen:]
        if any(e["type"] == "customer.subscription.updated" for e in events):
            return events
        time.sleep(0.005)
    raise AssertionError("no customer.subscription.updated")


@pytest.mark.clock_matrix("today", "feb29-leap", "dec31-23:59:59")
def test_api_and_webhook_apply_an_interval_switch_at_once(
    subscribed: tuple[Any, Client, Catalog, Webhooks], fake_stripe: FakeStripe
) -> None:
    user, client, plans, webhooks = subscribed
    usage.track(user, "messages", 300)
    customer = BillingCustomer.objects.get()
    fake_stripe.set_clock(
        (
            int(customer.current_period_start.timestamp())
            + int(customer.current_period_end.timestamp())
        )
        // 2
    )
    seen = len(fake_stripe.events())

    def work(index: int) -> Any:
        if index == 0:
            response = client.post(
                "/api/auth/billing/subscription",
                {"price": plans.pro_yearly},
                content_type="application/json",
            )
            return ("api", response.status_code)
        statuses = [
            webhooks.post(event).status_code for event in _wait_for_update(fake_stripe, seen)
        ]
        return ("webhooks", statuses)

    results = run_concurrently(1 + DELIVERERS, work)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert results[0] == ("api", 200)
    assert all(set(r[1]) == {200} for r in results[1:])
    webhooks.deliver_pending()

    customer.refresh_from_db()
    assert (customer.plan, customer.billing_interval) == (plans.pro, "year")
    messages = Entitlement.objects.get(customer=customer, feature__key="messages")
    assert messages.period_start == customer.current_period_start
    assert messages.usage == 0  # reset once for the new yearly period
    assert usage.track(user, "messages", 5, now=fake_now(fake_stripe)).balance == 995
    assert audit_ledger() == []
