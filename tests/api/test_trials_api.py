"""Trials: a plan's trialDays on checkout, trial_will_end's signal, and what happens at the
trial end without a payment method (TRIAL_END_WITHOUT_PAYMENT_METHOD)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from django.test import Client

from kernia_billing import signals
from kernia_billing.models import BillingCustomer
from kernia_billing.testing import FakeStripe
from tests.clock import PERIOD_BREAKS
from tests.factories import UserFactory
from tests.lifecycle import Catalog, plans, webhooks

__all__ = ["plans", "webhooks"]

pytestmark = pytest.mark.clock_matrix(*PERIOD_BREAKS)  # webhook flows: tests/clock.py

CHECKOUT_URL = "/api/auth/billing/checkout"
RETURN_URL = "/api/auth/billing/checkout/return"
CUSTOMER_URL = "/api/auth/billing/customer"


@pytest.fixture
def signed_in(client: Client, db: None) -> Client:
    client.force_login(UserFactory())
    return client


def checkout(client: Client, fake: FakeStripe, plan: str) -> str:
    response = client.post(CHECKOUT_URL, {"plan": plan}, content_type="application/json")
    assert response.status_code == 200, response.content
    session_id = str(response.json()["sessionId"])
    fake.complete_checkout_session(session_id)
    assert client.get(RETURN_URL, {"session_id": session_id}).status_code == 200
    return session_id


@pytest.mark.django_db
def test_trial_days_apply_on_checkout_and_trial_will_end_signals(
    signed_in: Client,
    fake_stripe: FakeStripe,
    plans: Catalog,
    webhooks: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    plans.pro.trial_days = 14
    plans.pro.save()
    checkout(signed_in, fake_stripe, "pro")
    body = signed_in.get(CUSTOMER_URL).json()
    assert body["subscription"]["status"] == "trialing"
    assert body["plan"]["key"] == "pro"  # trialing entitles
    customer = BillingCustomer.objects.get()
    assert customer.trial_end is not None
    assert (customer.trial_end - customer.current_period_start).days == 14
    webhooks.deliver_pending()

    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    signals.trial_will_end.connect(receiver)
    try:
        fake_stripe.set_clock(int(customer.trial_end.timestamp()) - 2 * 86400)
        assert fake_stripe.store.trial_will_end_due() == [customer.stripe_subscription_id]
        with django_capture_on_commit_callbacks(execute=True):
            webhooks.deliver_pending()
    finally:
        signals.trial_will_end.disconnect(receiver)
    assert [(r["customer"].pk, r["trial_end"]) for r in received] == [
        (customer.pk, customer.trial_end)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(("behavior", "status"), [("cancel", "canceled"), ("pause", "paused")])
def test_a_trial_without_payment_method_ends_as_the_setting_says(
    signed_in: Client,
    fake_stripe: FakeStripe,
    plans: Catalog,
    webhooks: Any,
    settings: Any,
    behavior: str,
    status: str,
) -> None:
    settings.KERNIA_BILLING = {
        **settings.KERNIA_BILLING,
        "TRIAL_END_WITHOUT_PAYMENT_METHOD": behavior,
    }
    plans.pro.trial_days = 7
    plans.pro.save()
    session_id = checkout(signed_in, fake_stripe, "pro")
    session = stripe.checkout.Session.retrieve(session_id)
    assert session.payment_method_collection == "if_required"
    sub = stripe.Subscription.retrieve(session.subscription)
    assert sub.trial_settings.end_behavior.missing_payment_method == behavior
    webhooks.deliver_pending()
    fake_stripe.advance_subscription(sub.id)
    webhooks.deliver_pending()
    customer = BillingCustomer.objects.get()
    assert customer.subscription_status == status
    assert customer.plan == plans.free


@pytest.mark.django_db
def test_the_plans_endpoint_shows_trial_days(signed_in: Client, plans: Catalog) -> None:
    plans.team.trial_days = 30
    plans.team.save()
    listed = {
        p["key"]: p["trialDays"] for p in signed_in.get("/api/auth/billing/plans").json()["plans"]
    }
    assert listed["team"] == 30 and listed["pro"] == 0
