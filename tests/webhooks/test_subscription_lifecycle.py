"""A subscription's whole life in (fake) Stripe, seen through billing/customer and check.

Every event is signed and POSTed to dj-stripe's real webhook endpoint; dj-stripe and
our receivers re-read objects from the fake, which holds the post-event state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe
from django.test import override_settings
from django.utils.dateparse import parse_datetime

from kernia_billing.models import BillingCustomer
from kernia_billing.services import usage as entitlements
from kernia_billing.services.checkout import ensure_stripe_customer
from kernia_billing.testing import FakeStripe
from tests.clock import PERIOD_BREAKS
from tests.factories import MembershipFactory, UserFactory
from tests.lifecycle import Catalog, Webhooks, fake_now

pytestmark = pytest.mark.clock_matrix(*PERIOD_BREAKS)


def as_datetime(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


CUSTOMER_URL = "/api/auth/billing/customer"
CHECKOUT_URL = "/api/auth/billing/checkout"


def billing_customer(client: Any, **params: Any) -> dict[str, Any]:
    response = client.get(CUSTOMER_URL, params)
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def messages(state: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in state["entitlements"] if e["feature"] == "messages")


def checkout(client: Any, fake: FakeStripe, **body: Any) -> tuple[str, str]:
    """POST billing/checkout, pay on the fake, follow Stripe back to the return endpoint."""
    body.setdefault("successUrl", "http://testserver/welcome")
    response = client.post(CHECKOUT_URL, body, content_type="application/json")
    assert response.status_code == 200, response.content
    session_id = response.json()["sessionId"]
    fake.complete_checkout_session(session_id)
    session = stripe.checkout.Session.retrieve(session_id)
    success_url = session.success_url.replace("{CHECKOUT_SESSION_ID}", session_id)
    parts = urlsplit(success_url)
    back = client.get(parts.path, parse_qs(parts.query))
    assert back.status_code == 302 and back["Location"] == "http://testserver/welcome"
    return session_id, str(session.subscription)


def customer_row(owner: Any) -> dict[str, Any]:
    customer = BillingCustomer.objects.get(owner_id=str(owner.pk))
    return {
        field: getattr(customer, field)
        for field in (
            "plan_id",
            "subscription_status",
            "stripe_subscription_id",
            "current_period_start",
            "current_period_end",
            "cancel_at_period_end",
            "trial_end",
            "seat_quantity",
        )
    }


@pytest.mark.django_db
def test_whole_life_of_a_subscription(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    user = UserFactory()
    client.force_login(user)
    webhooks.deliver_pending()  # catalog events from the setup
    assert billing_customer(client)["plan"]["key"] == "free"

    # Checkout: the return endpoint applies the plan before any webhook arrives.
    _, sub_id = checkout(client, fake_stripe, plan="pro")
    state = billing_customer(client)
    assert state["plan"] == {"key": "pro", "name": "Pro"}
    assert state["subscription"]["id"] == sub_id
    assert state["subscription"]["status"] == "active"
    assert state["portalAvailable"] is True
    assert state["stripeCustomerId"].startswith("cus_")
    assert messages(state)["included"] == 1000
    before = customer_row(user)

    # checkout.session.completed + customer.subscription.created + invoice.paid: nothing new.
    types = [e["type"] for e in webhooks.pending()]
    assert "checkout.session.completed" in types and "customer.subscription.created" in types
    webhooks.deliver_pending()
    assert customer_row(user) == before
    # Period boundaries come from the subscription item (current API version).
    item = stripe.Subscription.retrieve(sub_id)["items"]["data"][0]
    assert before["current_period_start"] == as_datetime(item["current_period_start"])
    assert before["current_period_end"] == as_datetime(item["current_period_end"])

    # Track, then renew: billing-period usage resets exactly once.
    response = client.post(
        "/api/auth/billing/track", {"feature": "messages", "amount": 80}, "application/json"
    )
    assert response.status_code == 201, response.content
    assert messages(billing_customer(client))["balance"] == 920
    fake_stripe.advance_subscription(sub_id)
    webhooks.deliver_pending()
    state = billing_customer(client)
    assert (
        parse_datetime(state["subscription"]["currentPeriodStart"])
        == (before["current_period_end"])
    )
    assert messages(state)["usage"] == 0 and messages(state)["balance"] == 1000
    webhooks.post(fake_stripe.events("customer.subscription.updated")[-1] | {"id": "evt_again"})
    assert messages(billing_customer(client))["usage"] == 0

    # Upgrade mid-period: usage kept, included raised.
    in_period = fake_now(fake_stripe)
    entitlements.track(user, "messages", 30, now=in_period)
    stripe.Subscription.modify(sub_id, items=[{"id": item["id"], "price": plans.business_monthly}])
    webhooks.deliver_pending()
    state = billing_customer(client)
    assert state["plan"]["key"] == "business"
    assert messages(state)["included"] == 10000
    assert messages(state)["usage"] == 30 and messages(state)["balance"] == 9970

    # Cancel at period end: access kept until the period ends.
    stripe.Subscription.modify(sub_id, cancel_at_period_end=True)
    webhooks.deliver_pending()
    state = billing_customer(client)
    assert state["subscription"]["cancelAtPeriodEnd"] is True
    assert state["plan"]["key"] == "business"
    assert entitlements.check(user, "messages", 5000).allowed

    # The period ends: customer.subscription.deleted -> the default plan.
    fake_stripe.advance_subscription(sub_id)
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.deleted"
    webhooks.deliver_pending()
    state = billing_customer(client)
    assert state["plan"]["key"] == "free"
    assert state["subscription"]["status"] == "canceled"
    result = entitlements.check(user, "messages", 101)
    assert not result.allowed and result.included == 100 and result.plan == "free"


@pytest.mark.django_db
def test_trial_then_active(fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks) -> None:
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    sub = fake_stripe.create_subscription(
        customer=customer.stripe_customer_id,
        items=[{"price": plans.pro_monthly}],
        trial_period_days=14,
    )
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.subscription_status == "trialing"
    assert customer.plan == plans.pro
    assert customer.trial_end is not None and customer.trial_end == customer.current_period_end

    fake_stripe.advance_subscription(sub["id"])
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.subscription_status == "active"
    assert customer.plan == plans.pro
    assert customer.current_period_start == customer.trial_end


@pytest.mark.django_db
@pytest.mark.parametrize(("grace", "plan_key"), [(True, "pro"), (False, "free")])
def test_past_due_follows_the_grace_setting(
    settings: Any,
    fake_stripe: FakeStripe,
    plans: Catalog,
    webhooks: Webhooks,
    grace: bool,
    plan_key: str,
) -> None:
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    sub = fake_stripe.create_subscription(
        customer=customer.stripe_customer_id, items=[{"price": plans.pro_monthly}]
    )
    webhooks.deliver_pending()
    with override_settings(KERNIA_BILLING={**settings.KERNIA_BILLING, "PAST_DUE_GRACE": grace}):
        fake_stripe.fail_payment(sub["id"])
        assert {e["type"] for e in webhooks.pending()} >= {
            "invoice.payment_failed",
            "customer.subscription.updated",
        }
        webhooks.deliver_pending()
        customer.refresh_from_db()
        assert customer.subscription_status == "past_due"
        assert customer.plan.key == plan_key
        assert entitlements.check(user, "messages", 101).allowed is grace


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["paused", "unpaid", "incomplete"])
def test_non_entitling_statuses_fall_back_to_the_default_plan(
    fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks, status: str
) -> None:
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    sub = fake_stripe.create_subscription(
        customer=customer.stripe_customer_id, items=[{"price": plans.pro_monthly}]
    )
    webhooks.deliver_pending()
    fake_stripe.set_subscription_status(sub["id"], status)
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert (customer.subscription_status, customer.plan.key) == (status, "free")
    if status == "paused":
        fake_stripe.set_subscription_status(sub["id"], "active")
        assert fake_stripe.events()[-1]["type"] == "customer.subscription.resumed"
        webhooks.deliver_pending()
        customer.refresh_from_db()
        assert customer.plan.key == "pro"


@pytest.mark.django_db
def test_seat_plan_takes_its_limit_from_the_quantity(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    user = UserFactory()
    client.force_login(user)
    _, sub_id = checkout(client, fake_stripe, plan="team", quantity=7)
    webhooks.deliver_pending()
    state = billing_customer(client)
    assert state["subscription"]["seatQuantity"] == 7
    seats = next(e for e in state["entitlements"] if e["feature"] == "seats")
    assert seats["included"] == 7
    item = stripe.Subscription.retrieve(sub_id)["items"]["data"][0]
    stripe.Subscription.modify(sub_id, items=[{"id": item["id"], "quantity": 9}])
    webhooks.deliver_pending()
    seats = next(e for e in billing_customer(client)["entitlements"] if e["feature"] == "seats")
    assert seats["included"] == 9


@pytest.mark.django_db
def test_organization_customer(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    membership = MembershipFactory()
    organization, user = membership.organization, membership.user
    client.force_login(user)
    checkout(client, fake_stripe, plan="pro", organizationId=organization.pk)
    webhooks.deliver_pending()
    org_state = billing_customer(client, organizationId=organization.pk)
    assert org_state["plan"]["key"] == "pro"
    assert billing_customer(client)["plan"]["key"] == "free"  # the member's own customer
    remote = stripe.Customer.retrieve(org_state["stripeCustomerId"])
    assert remote.metadata["kernia_owner_type"] == "accounts.organization"
    assert remote.metadata["kernia_owner_id"] == str(organization.pk)
    assert entitlements.check(organization, "messages", 1000).allowed
    # Not a member: no data.
    client.force_login(UserFactory())
    response = client.get(CUSTOMER_URL, {"organizationId": organization.pk})
    assert response.status_code == 403


@pytest.mark.django_db
def test_subscription_created_outside_checkout_is_linked_by_metadata(
    fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    user = UserFactory()
    remote = fake_stripe.create_customer(
        email=user.email,
        metadata={"kernia_owner_type": "auth.user", "kernia_owner_id": str(user.pk)},
    )
    fake_stripe.create_subscription(customer=remote["id"], items=[{"price": plans.pro_monthly}])
    webhooks.deliver_pending()
    customer = BillingCustomer.objects.get(owner_id=str(user.pk))
    assert customer.stripe_customer_id == remote["id"]
    assert customer.plan == plans.pro


@pytest.mark.django_db
def test_customer_deleted_in_stripe(
    fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    fake_stripe.create_subscription(
        customer=customer.stripe_customer_id, items=[{"price": plans.pro_monthly}]
    )
    webhooks.deliver_pending()
    stripe.Customer.delete(customer.stripe_customer_id)
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.stripe_customer_id is None
    assert customer.plan == plans.free
    assert customer.stripe_subscription_id == ""


@pytest.mark.django_db
def test_mapped_price_archived_in_stripe_is_flagged(
    fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    from kernia_billing.selectors import flagged_mapped_prices

    webhooks.deliver_pending()
    assert not flagged_mapped_prices().exists()
    stripe.Price.modify(plans.pro_yearly, active=False)
    webhooks.deliver_pending()
    assert [p.stripe_id for p in flagged_mapped_prices()] == [plans.pro_yearly]
    stripe.Price.modify(plans.pro_monthly, lookup_key="pro-monthly-v2")
    webhooks.deliver_pending()
    from kernia_billing.models import CatalogPrice

    assert CatalogPrice.objects.get(stripe_id=plans.pro_monthly).review_state == "pending"
