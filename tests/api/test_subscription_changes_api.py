"""billing/subscription (+ preview, cancel, resume) and billing/invoice/upcoming against
the fake Stripe: the journey of issue 16, refusals, and webhooks that change nothing."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from django.test import Client

from kernia_billing.models import BillingCustomer, Entitlement
from kernia_billing.testing import FakeStripe
from tests.clock import PERIOD_BREAKS
from tests.factories import UserFactory
from tests.lifecycle import Catalog, plans, webhooks

__all__ = ["plans", "webhooks"]

pytestmark = pytest.mark.clock_matrix(*PERIOD_BREAKS)  # webhook flows: tests/clock.py

CHECKOUT_URL = "/api/auth/billing/checkout"
RETURN_URL = "/api/auth/billing/checkout/return"
CUSTOMER_URL = "/api/auth/billing/customer"
CHANGE_URL = "/api/auth/billing/subscription"
PREVIEW_URL = "/api/auth/billing/subscription/preview"
CANCEL_URL = "/api/auth/billing/subscription/cancel"
RESUME_URL = "/api/auth/billing/subscription/resume"
UPCOMING_URL = "/api/auth/billing/invoice/upcoming"


@pytest.fixture
def signed_in(client: Client, db: None) -> Client:
    client.force_login(UserFactory())
    return client


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def subscribe(client: Client, fake: FakeStripe, plan: str, **extra: Any) -> None:
    session_id = post(client, CHECKOUT_URL, {"plan": plan, **extra}).json()["sessionId"]
    fake.complete_checkout_session(session_id)
    assert client.get(RETURN_URL, {"session_id": session_id}).status_code == 200


def halfway(fake: FakeStripe) -> None:
    customer = BillingCustomer.objects.get()
    start = int(customer.current_period_start.timestamp())
    end = int(customer.current_period_end.timestamp())
    fake.set_clock((start + end) // 2)


def stripe_subscription() -> stripe.Subscription:
    return stripe.Subscription.retrieve(BillingCustomer.objects.get().stripe_subscription_id)


@pytest.mark.django_db
def test_the_issue_journey(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Any
) -> None:
    subscribe(signed_in, fake_stripe, "pro")
    webhooks.deliver_pending()
    halfway(fake_stripe)

    # Pro monthly -> annual: a new yearly period starts now, the unused month is credited.
    switched = post(signed_in, CHANGE_URL, {"price": plans.pro_yearly})
    assert switched.status_code == 200, switched.content
    assert (switched.json()["kind"], switched.json()["effective"]) == ("interval", "now")
    customer = BillingCustomer.objects.get()
    assert (customer.billing_interval, customer.plan) == ("year", plans.pro)
    paid = stripe.Invoice.retrieve(switched.json()["invoiceId"])
    assert 12000 - 1200 < paid.amount_paid < 12000
    webhooks.deliver_pending()
    halfway(fake_stripe)

    # Upgrade to Team with 5 seats: the preview shows the prorated amount first.
    preview = post(signed_in, PREVIEW_URL, {"price": plans.team_monthly, "quantity": 5})
    assert preview.status_code == 200, preview.content
    body = preview.json()
    assert (body["kind"], body["plan"]["key"], body["quantity"]) == ("upgrade", "team", 5)
    assert body["amountAtRenewal"] == 5 * 900
    assert {g["feature"]: g["included"] for g in body["grants"]} == {
        "messages": 5000,
        "seats": 5,
    }
    assert any(line["proration"] and line["amount"] < 0 for line in body["lines"])
    upgraded = post(signed_in, CHANGE_URL, {"price": plans.team_monthly, "quantity": 5})
    assert upgraded.status_code == 200, upgraded.content
    invoice = stripe.Invoice.retrieve(upgraded.json()["invoiceId"])
    assert invoice.amount_due == body["amountDueNow"]
    customer.refresh_from_db()
    assert (customer.plan, customer.seat_quantity) == (plans.team, 5)
    seats = Entitlement.objects.get(customer=customer, feature__key="seats")
    assert seats.included == 5
    webhooks.deliver_pending()

    # Drop to 3 seats: the credit waits for the next invoice.
    halfway(fake_stripe)
    fewer = post(signed_in, CHANGE_URL, {"quantity": 3})
    assert fewer.status_code == 200, fewer.content
    assert fewer.json()["kind"] == "seats"
    customer.refresh_from_db()
    assert customer.seat_quantity == 3
    upcoming = signed_in.get(UPCOMING_URL).json()
    assert any(line["proration"] and line["amount"] < 0 for line in upcoming["lines"])
    webhooks.deliver_pending()

    # Schedule a downgrade to Free (cancel at period end), then take it back.
    cancelled = post(signed_in, CANCEL_URL, {})
    assert cancelled.status_code == 200, cancelled.content
    assert signed_in.get(CUSTOMER_URL).json()["subscription"]["cancelAtPeriodEnd"] is True
    resumed = post(signed_in, RESUME_URL, {})
    assert resumed.status_code == 200, resumed.content
    assert signed_in.get(CUSTOMER_URL).json()["subscription"]["cancelAtPeriodEnd"] is False
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert (customer.plan, customer.seat_quantity) == (plans.team, 3)


@pytest.mark.django_db
def test_a_downgrade_is_scheduled_for_the_period_end_then_cancelled(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Any
) -> None:
    subscribe(signed_in, fake_stripe, "business")
    preview = post(signed_in, PREVIEW_URL, {"price": plans.pro_monthly}).json()
    assert (preview["kind"], preview["effective"], preview["amountDueNow"]) == (
        "downgrade",
        "period_end",
        0,
    )
    response = post(signed_in, CHANGE_URL, {"price": plans.pro_monthly})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["effective"], body["plan"]) == ("period_end", "pro")
    schedule = stripe.SubscriptionSchedule.retrieve(body["scheduleId"])
    assert [p["items"][0]["price"] for p in schedule.phases] == [
        plans.business_monthly,
        plans.pro_monthly,
    ]
    assert BillingCustomer.objects.get().plan == plans.business  # until the period end

    # Keeping the current plan cancels the scheduled downgrade.
    kept = post(signed_in, CHANGE_URL, {"price": plans.business_monthly})
    assert kept.status_code == 200 and kept.json()["releasedSchedule"] is True
    assert stripe.SubscriptionSchedule.retrieve(body["scheduleId"]).status == "released"
    renewed = fake_stripe.advance_subscription(BillingCustomer.objects.get().stripe_subscription_id)
    assert renewed["items"]["data"][0]["price"]["id"] == plans.business_monthly
    webhooks.deliver_pending()
    assert BillingCustomer.objects.get().plan == plans.business


@pytest.mark.django_db
def test_a_scheduled_downgrade_happens_at_the_period_end(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Any
) -> None:
    subscribe(signed_in, fake_stripe, "business")
    assert post(signed_in, CHANGE_URL, {"price": plans.pro_monthly}).status_code == 200
    webhooks.deliver_pending()
    fake_stripe.advance_subscription(BillingCustomer.objects.get().stripe_subscription_id)
    webhooks.deliver_pending()
    customer = BillingCustomer.objects.get()
    assert customer.plan == plans.pro
    assert Entitlement.objects.get(customer=customer, feature__key="messages").included == 1000


@pytest.mark.django_db
def test_fewer_seats_than_in_use_is_refused(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    subscribe(signed_in, fake_stripe, "team", quantity=5)
    customer = BillingCustomer.objects.get()
    Entitlement.objects.filter(customer=customer, feature__key="seats").update(usage=4)
    response = post(signed_in, CHANGE_URL, {"quantity": 3})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "seats_in_use"
    assert stripe_subscription()["items"]["data"][0]["quantity"] == 5
    assert post(signed_in, CHANGE_URL, {"quantity": 4}).status_code == 200


@pytest.mark.django_db
def test_refusals(signed_in: Client, fake_stripe: FakeStripe, plans: Catalog) -> None:
    no_sub = post(signed_in, CHANGE_URL, {"price": plans.pro_monthly})
    assert (no_sub.status_code, no_sub.json()["error"]["code"]) == (409, "no_subscription")
    assert signed_in.get(UPCOMING_URL).status_code == 409
    subscribe(signed_in, fake_stripe, "pro")
    requests_before = len(fake_stripe.requests)
    for body in (
        {"price": "price_unknown"},
        {"price": plans.pro_monthly, "quantity": 3},
        {"price": 12},
        {"quantity": 10**12},
        {"price": "x\x00y"},
        {"prorationBehavior": "sometimes"},
    ):
        response = post(signed_in, CHANGE_URL, body)
        assert response.status_code == 400, (body, response.content)
        assert "error" in response.json()
    assert post(signed_in, CANCEL_URL, {"atPeriodEnd": "yes"}).status_code == 400
    writes = [r for r in fake_stripe.requests[requests_before:] if r.method != "GET"]
    assert writes == []


@pytest.mark.django_db
def test_upcoming_invoice_prices_this_periods_overage(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    meter = fake_stripe.create_meter(
        display_name="Messages", event_name="messages", default_aggregation={"formula": "sum"}
    )
    overage = stripe.Price.create(
        product=stripe.Price.retrieve(plans.pro_monthly).product,
        unit_amount=1,
        currency="usd",
        recurring={"interval": "month", "usage_type": "metered", "meter": meter["id"]},
    )
    subscribe(signed_in, fake_stripe, "pro")
    sub = stripe_subscription()
    stripe.Subscription.modify(sub.id, items=[{"price": overage.id}])
    fake_stripe.advance_clock(60)
    stripe.billing.MeterEvent.create(
        event_name="messages",
        payload={"stripe_customer_id": sub.customer, "value": "270"},
        identifier="overage-1",
    )
    response = signed_in.get(UPCOMING_URL)
    assert response.status_code == 200, response.content
    body = response.json()
    lines = {line["price"]: line for line in body["lines"]}
    assert (lines[overage.id]["quantity"], lines[overage.id]["amount"]) == (270, 270)
    assert body["amountDue"] == 1200 + 270
