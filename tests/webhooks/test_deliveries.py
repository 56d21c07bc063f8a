"""Delivery semantics: duplicates, order, signatures, failures and retries, health."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from djstripe.models import Event, Subscription, WebhookEventTrigger

from kernia_billing.models import BillingCustomer
from kernia_billing.services.checkout import ensure_stripe_customer
from kernia_billing.testing import FakeStripe
from tests.factories import StaffFactory, UserFactory
from tests.lifecycle import Catalog, Webhooks, stale_timestamp

HEALTH_URL = "/api/auth/billing/webhooks/health"


@pytest.fixture
def subscribed(fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks) -> dict[str, Any]:
    """A user on Pro through a subscription whose events were all delivered."""
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    sub = fake_stripe.create_subscription(
        customer=customer.stripe_customer_id, items=[{"price": plans.pro_monthly}]
    )
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.plan == plans.pro
    return {"user": user, "customer": customer, "sub": sub}


def subscription_reads(fake: FakeStripe, since: int) -> list[str]:
    return [r.path for r in fake.requests[since:] if r.path.startswith("/v1/subscriptions")]


@pytest.mark.django_db
def test_duplicate_delivery_changes_nothing(
    fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    stripe.Subscription.modify(subscribed["sub"]["id"], cancel_at_period_end=True)
    [event] = webhooks.pending()
    assert webhooks.post(event).status_code == 200
    customer = BillingCustomer.objects.get(pk=subscribed["customer"].pk)
    assert customer.cancel_at_period_end is True
    seen = len(fake_stripe.requests)

    assert webhooks.post(event).status_code == 200
    assert webhooks.post(event).status_code == 200
    again = BillingCustomer.objects.get(pk=customer.pk)
    assert again.updated_at == customer.updated_at  # not even saved again
    assert subscription_reads(fake_stripe, seen) == []  # answered from the stored Event
    assert Event.objects.filter(id=event["id"]).count() == 1
    assert WebhookEventTrigger.objects.filter(body__contains=event["id"]).count() == 3


@pytest.mark.django_db
def test_an_older_event_does_not_roll_back(
    fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    sub_id = subscribed["sub"]["id"]
    item_id = subscribed["sub"]["items"]["data"][0]["id"]
    stripe.Subscription.modify(sub_id, items=[{"id": item_id, "price": plans.business_monthly}])
    fake_stripe.advance_clock(60)
    stripe.Subscription.modify(sub_id, cancel_at_period_end=True)
    # (the upgrade's proration also sends invoiceitem.created, as Stripe does)
    upgrade, cancel = webhooks.pending("customer.subscription.updated")
    assert upgrade["created"] < cancel["created"]

    assert webhooks.post(cancel).status_code == 200
    customer = BillingCustomer.objects.get(pk=subscribed["customer"].pk)
    assert (customer.plan, customer.cancel_at_period_end) == (plans.business, True)
    seen = len(fake_stripe.requests)

    assert webhooks.post(upgrade).status_code == 200
    customer.refresh_from_db()
    assert (customer.plan, customer.cancel_at_period_end) == (plans.business, True)
    assert customer.stripe_state_at.timestamp() == cancel["created"]
    # Known stale before asking Stripe: only dj-stripe's own re-read happened.
    assert len(subscription_reads(fake_stripe, seen)) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("problem", ["wrong_secret", "stale", "tampered", "missing"])
def test_bad_signatures_are_refused_and_nothing_is_stored(
    fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any], problem: str
) -> None:
    stripe.Subscription.modify(subscribed["sub"]["id"], cancel_at_period_end=True)
    [event] = webhooks.pending()
    if problem == "wrong_secret":
        response = webhooks.post(event, secret="whsec_not_the_endpoint_secret")
    elif problem == "stale":
        response = webhooks.post(event, timestamp=stale_timestamp())
    else:
        body, headers = fake_stripe.sign_webhook(event, secret=webhooks.secret)
        kwargs = (
            {} if problem == "missing" else {"HTTP_STRIPE_SIGNATURE": headers["Stripe-Signature"]}
        )
        response = webhooks.client.post(
            webhooks.url, body.replace(b"true", b"false"), content_type="application/json", **kwargs
        )
    assert response.status_code == 400
    assert not Event.objects.filter(id=event["id"]).exists()
    assert BillingCustomer.objects.get(pk=subscribed["customer"].pk).cancel_at_period_end is False


@pytest.mark.django_db
def test_a_signature_just_inside_the_tolerance_is_accepted(
    webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    stripe.Subscription.modify(subscribed["sub"]["id"], cancel_at_period_end=True)
    [event] = webhooks.pending()
    assert webhooks.post(event, timestamp=int(time.time()) - 240).status_code == 200


@pytest.mark.django_db
def test_handler_error_fails_the_webhook_then_the_retry_applies(
    fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    sub_id = subscribed["sub"]["id"]
    stripe.Subscription.modify(sub_id, cancel_at_period_end=True)
    [event] = webhooks.pending()
    # dj-stripe's own re-read succeeds; ours (the next read of the subscription) fails.
    fake_stripe.inject_fault(f"/v1/subscriptions/{sub_id}", method="GET", status=None)
    fake_stripe.inject_fault(f"/v1/subscriptions/{sub_id}", method="GET", status=500)

    assert webhooks.post(event).status_code == 500
    trigger = WebhookEventTrigger.objects.order_by("-created").first()
    assert trigger is not None and trigger.exception and not trigger.processed
    assert not Event.objects.filter(id=event["id"]).exists()  # so the retry processes it
    mirror = Subscription.objects.get(id=sub_id)
    assert mirror.stripe_data["cancel_at_period_end"] is False  # dj-stripe's write rolled back
    assert BillingCustomer.objects.get(pk=subscribed["customer"].pk).cancel_at_period_end is False

    assert webhooks.post(event).status_code == 200
    assert BillingCustomer.objects.get(pk=subscribed["customer"].pk).cancel_at_period_end is True
    assert Subscription.objects.get(id=sub_id).stripe_data["cancel_at_period_end"] is True


@pytest.mark.django_db
def test_webhook_health(
    client: Any, fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    sub_id = subscribed["sub"]["id"]
    delivered_before = WebhookEventTrigger.objects.filter(processed=True).count()
    stripe.Subscription.modify(sub_id, cancel_at_period_end=True)
    [event] = webhooks.pending()
    webhooks.post(event, secret="whsec_wrong")
    fake_stripe.inject_fault(f"/v1/subscriptions/{sub_id}", method="GET", status=503)
    assert webhooks.post(event).status_code == 500
    assert webhooks.post(event).status_code == 200

    assert client.get(HEALTH_URL).status_code in (401, 403)
    client.force_login(UserFactory())
    assert client.get(HEALTH_URL).status_code == 403
    client.force_login(StaffFactory())
    response = client.get(HEALTH_URL)
    assert response.status_code == 200
    health = response.json()
    assert health["counts"] == {
        "processed": delivered_before + 1,
        "failed": 1,
        "invalidSignature": 1,
    }
    assert health["byType"]["customer.subscription.updated"] == 3
    assert health["lastReceivedAt"] is not None
    assert health["lastFailure"]["type"] == "customer.subscription.updated"
    assert "Injected fault" in health["lastFailure"]["message"]


@pytest.mark.django_db
def test_staff_process_a_failed_delivery_again_from_the_admin(
    client: Any, fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    sub_id = subscribed["sub"]["id"]
    stripe.Subscription.modify(sub_id, cancel_at_period_end=True)
    [event] = webhooks.pending()
    fake_stripe.inject_fault(f"/v1/subscriptions/{sub_id}", method="GET", status=503)
    assert webhooks.post(event).status_code == 500
    assert webhooks.post(event, secret="whsec_wrong").status_code == 400
    customer = BillingCustomer.objects.get(pk=subscribed["customer"].pk)
    assert customer.cancel_at_period_end is False
    failed, refused = WebhookEventTrigger.objects.filter(body__contains=event["id"]).order_by("pk")

    client.force_login(StaffFactory())
    deliveries = reverse("admin:kernia_billing_webhookdelivery_changelist")
    page = client.get(deliveries, {"outcome": "failed"}).content.decode()
    assert "Failed (Stripe retries)" in page and "Injected fault" in page
    response = client.post(
        deliveries,
        {"action": "process_again", ACTION_CHECKBOX_NAME: [failed.pk, refused.pk]},
        follow=True,
    )

    [message] = [str(m) for m in response.context["messages"]]
    assert "1 succeeded, 0 failed again" in message and "1 refused" in message
    failed.refresh_from_db()
    assert failed.processed and failed.exception == ""
    customer.refresh_from_db()
    assert customer.cancel_at_period_end is True
    detail = client.get(
        reverse("admin:kernia_billing_webhookdelivery_change", args=[refused.pk])
    ).content.decode()
    assert "Stripe-Signature" in detail and event["id"] in detail


@pytest.mark.django_db
def test_processing_again_needs_the_manage_permission(
    client: Any, fake_stripe: FakeStripe, webhooks: Webhooks, subscribed: dict[str, Any]
) -> None:
    from django.contrib.auth.models import Permission

    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(viewer)
    deliveries = reverse("admin:kernia_billing_webhookdelivery_changelist")
    page = client.get(deliveries)
    assert page.status_code == 200
    assert "process_again" not in page.content.decode()
