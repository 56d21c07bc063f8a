"""Deliver a fake Stripe event to dj-stripe's webhook endpoint, signed as Stripe signs it."""

from __future__ import annotations

from typing import Any


def webhook_url(endpoint: Any) -> str:
    """dj-stripe's URL for ``endpoint`` (a ``djstripe.models.WebhookEndpoint``)."""
    from django.urls import reverse

    return reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})


def post_event(
    client: Any,
    endpoint: Any,
    fake_stripe: Any,
    event: dict[str, Any],
    *,
    secret: str | None = None,
    timestamp: int | None = None,
) -> Any:
    """POST ``event`` (a Stripe event dict) with a valid ``Stripe-Signature``.

    ``client`` is Django's test client; ``secret`` signs with another secret (a refused
    delivery), ``timestamp`` with another time (a stale signature).
    """
    body, headers = fake_stripe.sign_webhook(
        event, secret=secret or endpoint.secret, timestamp=timestamp
    )
    return client.post(
        webhook_url(endpoint),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"],
    )
