"""The demo's plan page shows this period's overage with its charge; the demo's Team
customer 270 messages over sees them on the upcoming and the renewal invoice."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from kernia_billing import adjust_usage, track
from kernia_billing.models import BillingCustomer, CatalogPrice, Feature, PlanFeature


@pytest.fixture
def demo(db, stripe_settings, fake_stripe):
    call_command("demo_setup", base_url="http://testserver", stdout=io.StringIO())
    fake_stripe.webhook_delivery = False
    return fake_stripe


def test_the_plan_page_shows_the_overage_of_this_period(client, metered):
    Feature.objects.filter(pk=metered.feature.pk).update(unit="messages")
    customer = metered.customer()
    client.force_login(customer.owner)
    assert b"Overage this period" not in client.get("/").content
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 300)
    adjust_usage(customer.owner, "messages", -30, reason="duplicates")
    page = client.get("/").content.decode()
    assert "Overage this period: <strong>270 messages · $2.70</strong>" in page


def test_the_demos_team_customer_270_over_sees_them_upcoming_and_invoiced(client, demo):
    """Issue 14's "done when", on the demo's own Stripe seed: Team bills messages over
    its 50,000 through the ``messages_overage`` meter at $0.01 each."""
    overage = PlanFeature.objects.get(plan__key="team", feature__key="messages").overage_price
    assert overage is not None and overage.lookup_key == "messages_overage"
    [meter] = demo.store.list_objects("billing.meter")
    assert overage.stripe_meter_id == meter["id"]

    client.login(username="alice", password="alice")
    team_monthly = CatalogPrice.objects.get(lookup_key="team_monthly").stripe_id
    client.post("/checkout/", {"price": team_monthly, "quantity": "1"})
    session = demo.store.list_objects("checkout.session")[-1]
    demo.complete_checkout_session(session["id"])
    client.get("/checkout/return/", {"session_id": session["id"]})
    customer = BillingCustomer.objects.get(stripe_customer_id=session["customer"])
    assert customer.plan.key == "team"
    [sub] = demo.store.list_objects("subscription")
    prices = {item["price"]["id"] for item in sub["items"]["data"]}
    assert overage.stripe_id in prices  # checkout put the overage price on it

    alice = customer.owner
    track(alice, "messages", 50000)
    track(alice, "messages", 270)
    page = client.get("/").content.decode()
    assert "Overage this period: <strong>270 messages · $2.70</strong>" in page

    out = io.StringIO()
    call_command("kernia_report_usage", once=True, stdout=out)
    demo.advance_clock(60)  # Stripe's summaries count the event from the next second on
    upcoming = client.get("/api/auth/billing/invoice/upcoming")
    assert upcoming.status_code == 200, upcoming.content
    lines = {line["price"]: line for line in upcoming.json()["lines"]}
    assert (lines[overage.stripe_id]["quantity"], lines[overage.stripe_id]["amount"]) == (
        270,
        270,
    )

    demo.advance_subscription(sub["id"])
    [invoice] = [
        i for i in demo.store.list_invoices({}) if i["billing_reason"] == "subscription_cycle"
    ]
    [line] = [
        li
        for li in invoice["lines"]["data"]
        if li["pricing"]["price_details"]["price"] == overage.stripe_id
    ]
    assert (line["quantity"], line["amount"]) == (270, 270)  # 270 messages · $2.70
