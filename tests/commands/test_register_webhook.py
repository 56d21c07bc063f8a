"""kernia_register_webhook: the Stripe endpoint and dj-stripe's row, created then updated."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from djstripe.models import WebhookEndpoint

from kernia_billing.webhooks import RECEIVED_EVENTS

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("kernia_register_webhook", *args, stdout=out)
    return out.getvalue()


def test_register_creates_then_updates_one_endpoint(stripe_settings, fake_stripe):
    output = run("--url", "https://app.example.com")

    row = WebhookEndpoint.objects.get()
    url = f"https://app.example.com/stripe/webhook/{row.djstripe_uuid}/"
    assert f"Stripe posts to: {url}" in output and "Created" in output
    assert row.url == url and row.secret.startswith("whsec_")
    [remote] = fake_stripe.store.list_objects("webhook_endpoint")
    assert remote["url"] == url
    assert sorted(remote["enabled_events"]) == RECEIVED_EVENTS
    assert {"customer.subscription.updated", "invoice.paid", "price.updated"} <= set(
        RECEIVED_EVENTS
    )

    again = run("--url", "https://app.example.com/")
    assert "Updated" in again and url in again
    assert WebhookEndpoint.objects.get().secret == row.secret  # the signing secret is kept
    assert len(fake_stripe.store.list_objects("webhook_endpoint")) == 1


def test_a_signed_delivery_to_the_registered_endpoint_is_processed(
    client, stripe_settings, fake_stripe
):
    from kernia_billing.models import WebhookDelivery
    from kernia_billing.testing import post_event

    run("--url", "http://testserver", "-v", "0")
    endpoint = WebhookEndpoint.objects.get()
    fake_stripe.webhook_delivery = False
    fake_stripe.create_customer(email="e@example.com")
    [event] = [
        e for e in fake_stripe.store.list_objects("event") if e["type"] == "customer.created"
    ]

    assert post_event(client, endpoint, fake_stripe, event).status_code == 200
    assert WebhookDelivery.objects.get().outcome == "processed"


def test_register_refuses_a_bad_url_and_reports_stripe_failures(stripe_settings, fake_stripe):
    with pytest.raises(CommandError, match="http"):
        run("--url", "app.example.com")
    fake_stripe.inject_fault("/v1/webhook_endpoints", status=400, times=1)
    with pytest.raises(CommandError, match="Stripe refused"):
        run("--url", "https://app.example.com")
    assert not WebhookEndpoint.objects.exists()
