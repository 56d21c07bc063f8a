"""Signed events through dj-stripe's real webhook endpoint, against the fake Stripe."""

from __future__ import annotations

import time
import uuid

import pytest
from django.urls import reverse
from djstripe.models import Event, Subscription, WebhookEventTrigger

from kernia_billing.testing import post_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscription(fake_stripe):
    product = fake_stripe.create_product(name="Pro")
    price = fake_stripe.create_price(
        product=product["id"], unit_amount=1200, currency="usd", recurring={"interval": "month"}
    )
    customer = fake_stripe.create_customer(email="ada@example.com")
    return fake_stripe.create_subscription(customer=customer["id"], items=[{"price": price["id"]}])


def test_created_then_updated_subscription(client, webhook_endpoint, fake_stripe, subscription):
    created = fake_stripe.events("customer.subscription.created")[-1]
    response = post_event(client, webhook_endpoint, fake_stripe, created)
    assert response.status_code == 200, response.content
    mirrored = Subscription.objects.get(id=subscription["id"])
    assert mirrored.stripe_data["status"] == "active"
    assert mirrored.stripe_data["cancel_at_period_end"] is False

    import stripe

    stripe.Subscription.modify(subscription["id"], cancel_at_period_end=True)
    updated = fake_stripe.events("customer.subscription.updated")[-1]
    response = post_event(client, webhook_endpoint, fake_stripe, updated)
    assert response.status_code == 200, response.content
    mirrored.refresh_from_db()
    assert mirrored.stripe_data["cancel_at_period_end"] is True
    # Current API: the period lives on the items.
    item = mirrored.stripe_data["items"]["data"][0]
    assert item["current_period_end"] > item["current_period_start"]
    assert Event.objects.filter(id=updated["id"]).exists()


def test_bad_signature_is_refused_and_nothing_stored(
    client, webhook_endpoint, fake_stripe, subscription
):
    event = fake_stripe.events("customer.subscription.created")[-1]
    response = post_event(
        client, webhook_endpoint, fake_stripe, event, secret="whsec_not_the_right_secret"
    )
    assert response.status_code == 400
    assert not Subscription.objects.exists()
    assert not Event.objects.exists()
    assert WebhookEventTrigger.objects.get().valid is False


def test_stale_timestamp_is_refused(client, webhook_endpoint, fake_stripe, subscription):
    event = fake_stripe.events("customer.subscription.created")[-1]
    response = post_event(
        client, webhook_endpoint, fake_stripe, event, timestamp=int(time.time()) - 301
    )
    assert response.status_code == 400
    assert not Subscription.objects.exists()
    assert not Event.objects.exists()


def test_unknown_endpoint_is_refused(client, webhook_endpoint, fake_stripe, subscription):
    event = fake_stripe.events("customer.subscription.created")[-1]
    body, headers = fake_stripe.sign_webhook(event, secret=webhook_endpoint.secret)
    url = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": uuid.uuid4()})
    signature = headers["Stripe-Signature"]
    response = client.post(
        url, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
    )
    assert response.status_code == 404
    assert not Subscription.objects.exists()
    assert not WebhookEventTrigger.objects.exists()
