"""The demo's story: a Team customer 270 messages over sees them on the renewal invoice."""

from __future__ import annotations

import pytest
from django.urls import reverse

from kernia_billing import track
from kernia_billing.models import BillingCustomer, Feature, OverageReport, Plan, ReportStatus
from kernia_billing.services import catalog
from kernia_billing.services.customers import get_or_create_customer
from kernia_billing.services.entitlements.sync import sync_entitlements
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.metering.sender import send_pending
from tests.factories import UserFactory
from tests.lifecycle import make_webhooks


@pytest.fixture
def team(db, stripe_settings, fake_stripe):
    meter = fake_stripe.create_meter(
        display_name="Messages", event_name="messages", default_aggregation={"formula": "sum"}
    )
    product = fake_stripe.create_product(name="Team")
    team_price = fake_stripe.create_price(
        product=product["id"],
        currency="usd",
        unit_amount=4900,
        recurring={"interval": "month"},
        lookup_key="team_monthly",
    )
    overage = fake_stripe.create_price(
        product=product["id"],
        currency="usd",
        unit_amount=1,
        recurring={"interval": "month", "usage_type": "metered", "meter": meter["id"]},
        lookup_key="messages_overage",
    )
    catalog.sync_catalog()
    catalog.load_catalog(
        {
            "plans": [
                {
                    "key": "team",
                    "name": "Team",
                    "prices": ["lookup:team_monthly"],
                    "features": [
                        {
                            "key": "messages",
                            "kind": "metered",
                            "included": 1000,
                            "resetPeriod": "billing",
                            "overagePrice": "lookup:messages_overage",
                        }
                    ],
                }
            ]
        },
        approve=True,
    )
    return team_price, overage


def test_team_customer_270_over_is_invoiced_for_them_at_renewal(team, fake_stripe):
    team_price, overage = team
    webhooks = make_webhooks(fake_stripe)
    user = UserFactory()
    stripe_customer = fake_stripe.create_customer(email="team@example.com")
    customer = get_or_create_customer(user)
    customer.stripe_customer_id = stripe_customer["id"]
    customer.save(update_fields=["stripe_customer_id"])
    sub = fake_stripe.create_subscription(
        customer=stripe_customer["id"],
        items=[{"price": team_price["id"]}, {"price": overage["id"]}],
    )
    webhooks.deliver_pending()
    customer = BillingCustomer.objects.get(pk=customer.pk)
    assert customer.plan.key == "team"

    track(user, "messages", 990)
    track(user, "messages", 280)  # 10 within the grant, 270 beyond
    assert send_pending().sent == 1
    assert reconcile_meters() == []

    fake_stripe.advance_subscription(sub["id"])
    webhooks.deliver_pending()  # invoice.created flushes the outbox first (nothing left)
    invoice = fake_stripe.store.list_invoices({})[0]
    [line] = [
        li
        for li in invoice["lines"]["data"]
        if li["pricing"]["price_details"]["price"] == overage["id"]
    ]
    assert (line["quantity"], line["amount"]) == (270, 270)  # 270 messages · $2.70
    assert invoice["total"] == 4900 + 270


def test_invoice_created_sends_what_is_still_queued(team, fake_stripe):
    team_price, overage = team
    webhooks = make_webhooks(fake_stripe)
    user = UserFactory()
    customer = get_or_create_customer(user)
    stripe_customer = fake_stripe.create_customer(email="q@example.com")
    customer.stripe_customer_id = stripe_customer["id"]
    customer.save(update_fields=["stripe_customer_id"])
    fake_stripe.create_subscription(
        customer=stripe_customer["id"],
        items=[{"price": team_price["id"]}, {"price": overage["id"]}],
    )
    webhooks.deliver_pending()
    track(user, "messages", 1005)
    assert OverageReport.objects.get().status == ReportStatus.PENDING
    # Stripe drafts an invoice for the customer: its invoice.created flushes the outbox.
    invoice_created = {
        "id": "evt_manual_invoice_created",
        "object": "event",
        "type": "invoice.created",
        "api_version": fake_stripe.store.account_api_version,
        "created": fake_stripe.now(),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {
            "object": {
                "id": "in_manual",
                "object": "invoice",
                "customer": stripe_customer["id"],
                "status": "draft",
            }
        },
    }
    assert webhooks.post(invoice_created).status_code == 200
    assert OverageReport.objects.get().status == ReportStatus.SENT


def test_billing_customer_shows_this_periods_overage_and_its_estimate(team, fake_stripe, client):
    Feature.objects.filter(key="messages").update(unit="messages")
    user = UserFactory()
    customer = get_or_create_customer(user)
    customer.plan = Plan.objects.get(key="team")
    customer.save()
    sync_entitlements(customer)
    track(user, "messages", 1270)
    client.force_login(user)
    body = client.get(reverse("kernia_billing:billing-customer")).json()
    [overage] = body["overage"]
    assert (overage["units"], overage["estimatedAmount"], overage["currency"]) == (270, 270, "usd")
    assert overage["display"] == "270 messages · $2.70"
