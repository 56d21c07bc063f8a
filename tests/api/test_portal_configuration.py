"""The billing portal configuration follows the mapped plans' approved prices; portal
sessions use it; the hosted portal switches plans and seats within it only."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from io import StringIO
from typing import Any

import pytest
import stripe
from django.core.management import call_command
from django.test import Client

from kernia_billing.models import BillingCustomer, PlanPrice
from kernia_billing.services.subscriptions.portal import sync_portal_configuration
from kernia_billing.testing import FakeStripe
from tests.factories import UserFactory
from tests.lifecycle import Catalog, plans, webhooks

__all__ = ["plans", "webhooks"]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def signed_in(client: Client, db: None) -> Client:
    client.force_login(UserFactory())
    return client


def configured_prices(config: Any) -> set[str]:
    update = config["features"]["subscription_update"]
    return {p for entry in update["products"] for p in entry["prices"]}


@pytest.mark.django_db
def test_sync_lists_exactly_the_offerable_prices(fake_stripe: FakeStripe, plans: Catalog) -> None:
    first = sync_portal_configuration()
    assert first.outcome == "created"
    config = stripe.billing_portal.Configuration.retrieve(first.configuration_id)
    assert configured_prices(config) == {
        plans.pro_monthly,
        plans.pro_yearly,
        plans.business_monthly,
        plans.team_monthly,
    }
    assert sync_portal_configuration().outcome == "unchanged"
    PlanPrice.objects.filter(price__stripe_id=plans.business_monthly).delete()
    out = StringIO()
    call_command("kernia_sync_portal", stdout=out)
    assert f"{first.configuration_id} updated" in out.getvalue()
    config = stripe.billing_portal.Configuration.retrieve(first.configuration_id)
    assert plans.business_monthly not in configured_prices(config)
    assert len(fake_stripe.store.list_objects("billing_portal.configuration")) == 1


def _post_form(url: str, data: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode(), method="POST")
    try:
        with _NO_PROXY.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.django_db
def test_the_hosted_portal_switches_plans_within_the_configuration(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Any
) -> None:
    response = signed_in.post(
        "/api/auth/billing/checkout", {"plan": "pro"}, content_type="application/json"
    )
    session_id = response.json()["sessionId"]
    fake_stripe.complete_checkout_session(session_id)
    signed_in.get("/api/auth/billing/checkout/return", {"session_id": session_id})
    webhooks.deliver_pending()

    portal = signed_in.post("/api/auth/billing/portal", {}, content_type="application/json")
    url = portal.json()["url"]
    portal_id = url.rsplit("/", 1)[1]
    session = fake_stripe.store.retrieve("billing_portal.session", portal_id)
    assert session["configuration"].startswith("bpc_")
    with _NO_PROXY.open(url, timeout=5) as page:
        html = page.read().decode()
    assert "Change plan" in html and plans.team_monthly in html

    sub_id = BillingCustomer.objects.get().stripe_subscription_id
    action = f"{fake_stripe.url}/portal/{portal_id}/subscriptions/{sub_id}/update"
    other = stripe.Price.create(
        product=stripe.Price.retrieve(plans.pro_monthly).product,
        unit_amount=1,
        currency="usd",
        recurring={"interval": "month"},
    )
    assert _post_form(action, {"price": other.id}) == 400  # not in the configuration
    assert _post_form(action, {"price": plans.team_monthly, "quantity": "4"}) in (200, 303)
    webhooks.deliver_pending()
    customer = BillingCustomer.objects.get()
    assert (customer.plan, customer.seat_quantity) == (plans.team, 4)
