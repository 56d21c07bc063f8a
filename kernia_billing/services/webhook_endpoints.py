"""Register dj-stripe's webhook endpoint with Stripe (``kernia_register_webhook``).

One Stripe endpoint per site URL and mode: created the first time (dj-stripe's
``WebhookEndpoint`` row keeps the signing secret, which Stripe shows only then),
updated afterwards (events, URL), so running it again changes nothing it need not.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.urls import reverse

from . import stripe_gateway


@dataclass(frozen=True, slots=True)
class RegisteredEndpoint:
    url: str  # what Stripe posts to
    stripe_id: str
    created: bool
    events: tuple[str, ...]


def _webhook_url(site_url: str, djstripe_uuid: Any) -> str:
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": djstripe_uuid})
    return f"{site_url.rstrip('/')}{path}"


def stripe_webhook_endpoint(
    stripe_id: str | None, *, api_key: str | None, livemode: bool, **fields: Any
) -> dict[str, Any]:
    """Create (``stripe_id=None``) or update a Stripe webhook endpoint."""
    key = stripe_gateway.api_key_for(api_key=api_key, livemode=livemode)
    if stripe_id is None:
        # The dj-stripe uuid is new per registration: a retried request creates no second one.
        uuid_key = fields.get("metadata", {}).get("djstripe_uuid", "")
        return stripe_gateway.create(
            "webhook_endpoint",
            api_key=key,
            livemode=livemode,
            idempotency_key=f"kernia-webhook-endpoint-{uuid_key}" if uuid_key else None,
            **fields,
        )
    return stripe_gateway.modify("webhook_endpoint", stripe_id, api_key=key, **fields)


def register_webhook_endpoint(
    site_url: str,
    *,
    events: Sequence[str],
    api_key: str | None = None,
    livemode: bool = False,
) -> RegisteredEndpoint:
    """Create or update the Stripe webhook endpoint for dj-stripe's URL on ``site_url``."""
    from djstripe.models import WebhookEndpoint

    enabled = sorted(set(events))
    prefix = _webhook_url(site_url, uuid.UUID(int=0)).rsplit("/", 2)[0] + "/"
    existing = (
        WebhookEndpoint.objects.filter(url__startswith=prefix, livemode=livemode)
        .order_by("-created")
        .first()
    )
    if existing is not None:
        url = _webhook_url(site_url, existing.djstripe_uuid)
        data = stripe_webhook_endpoint(
            existing.id, api_key=api_key, livemode=livemode, url=url, enabled_events=enabled
        )
        with transaction.atomic():
            secret = existing.secret
            endpoint = stripe_gateway.mirror(WebhookEndpoint, data, api_key=api_key)
            endpoint.secret = secret  # Stripe returns the secret only on create
            endpoint.save()
        return RegisteredEndpoint(url, str(data["id"]), created=False, events=tuple(enabled))

    djstripe_uuid = uuid.uuid4()
    url = _webhook_url(site_url, djstripe_uuid)
    data = stripe_webhook_endpoint(
        None,
        api_key=api_key,
        livemode=livemode,
        url=url,
        enabled_events=enabled,
        metadata={"djstripe_uuid": str(djstripe_uuid)},
        description="kernia-billing (dj-stripe)",
    )
    with transaction.atomic():
        endpoint = stripe_gateway.mirror(WebhookEndpoint, data, api_key=api_key)
        endpoint.secret = data["secret"]
        endpoint.save()
    return RegisteredEndpoint(url, str(data["id"]), created=True, events=tuple(enabled))
