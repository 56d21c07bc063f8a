"""The demo's plan changes (issue 16's "done when"), offline against the fake Stripe:
a Pro-monthly customer switches to annual, upgrades to Team with 5 seats seeing the
prorated amount first, drops to 3 seats, schedules a downgrade to Free and cancels it."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from kernia_billing.models import BillingCustomer, CatalogPrice

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(stripe_settings, fake_stripe):
    call_command("demo_setup", base_url="http://testserver", stdout=io.StringIO())
    fake_stripe.webhook_delivery = False
    return fake_stripe


def price(lookup_key: str) -> str:
    return CatalogPrice.objects.get(lookup_key=lookup_key).stripe_id


def test_the_demo_journey(client, demo):
    client.login(username="alice", password="alice")
    client.post("/checkout/", {"price": price("pro_monthly")})
    session = demo.store.list_objects("checkout.session")[-1]
    demo.complete_checkout_session(session["id"])
    client.get("/checkout/return/", {"session_id": session["id"]})
    customer = BillingCustomer.objects.get(stripe_customer_id=session["customer"])
    assert customer.plan.key == "pro"
    page = client.get("/").content.decode()
    assert "Switch to annual" in page and 'data-testid="seats-team"' in page

    confirm = client.post("/plan/change/", {"price": price("pro_annual")})
    assert "Switch billing interval" in confirm.content.decode()
    done = client.post("/plan/change/confirm/", {"price": price("pro_annual")}, follow=True)
    assert "Done: you are on pro" in done.content.decode()
    customer.refresh_from_db()
    assert customer.billing_interval == "year"

    preview = client.post("/plan/change/", {"price": price("team_monthly"), "quantity": "5"})
    body = preview.content.decode()
    assert "Upgrade to Team" in body and 'data-testid="amount-due-now"' in body
    assert preview.context["preview"]["quantity"] == 5
    client.post("/plan/change/confirm/", {"price": price("team_monthly"), "quantity": "5"})
    customer.refresh_from_db()
    assert (customer.plan.key, customer.seat_quantity) == ("team", 5)

    client.post("/plan/change/", {"price": price("team_monthly"), "quantity": "3"})
    client.post("/plan/change/confirm/", {"price": price("team_monthly"), "quantity": "3"})
    customer.refresh_from_db()
    assert customer.seat_quantity == 3

    scheduled = client.post("/plan/cancel/", follow=True).content.decode()
    assert "free plan at the period end" in scheduled and 'data-testid="keep-plan"' in scheduled
    kept = client.post("/plan/resume/", follow=True).content.decode()
    assert "You keep your team plan" in kept
    customer.refresh_from_db()
    assert (customer.plan.key, customer.cancel_at_period_end) == ("team", False)


def test_a_bad_seat_count_is_a_message_not_an_error(client, demo):
    client.login(username="alice", password="alice")
    client.post("/checkout/", {"price": price("team_monthly"), "quantity": "2"})
    session = demo.store.list_objects("checkout.session")[-1]
    demo.complete_checkout_session(session["id"])
    client.get("/checkout/return/", {"session_id": session["id"]})
    assert BillingCustomer.objects.get(stripe_customer_id=session["customer"]).seat_quantity == 2
    response = client.post(
        "/plan/change/", {"price": price("team_monthly"), "quantity": "lots"}, follow=True
    )
    assert response.status_code == 200
    assert "whole number" in response.content.decode()
