"""Register dj-stripe's webhook endpoint with Stripe, with the events kernia needs.

Examples::

    python manage.py kernia_register_webhook --url https://app.example.com
    python manage.py kernia_register_webhook --url https://app.example.com --live
    python manage.py kernia_register_webhook --url http://127.0.0.1:8000   # the fake Stripe

``--url`` is your site's public base URL; the endpoint is dj-stripe's
(``<url>/stripe/webhook/<uuid>/``, wherever ``djstripe.urls`` is included). The first
run creates the Stripe endpoint and dj-stripe's ``WebhookEndpoint`` row with its
signing secret; later runs update the events and URL of the same endpoint. It prints
the URL Stripe posts to.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.webhook_endpoints import register_webhook_endpoint
from kernia_billing.webhooks import RECEIVED_EVENTS


class Command(BillingCommand):
    help = "Create or update the Stripe webhook endpoint for dj-stripe, with kernia's events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True, help="Your site's public base URL.")
        parser.add_argument("--api-key", help="Stripe secret key (default: dj-stripe's).")
        parser.add_argument("--live", action="store_true", help="Live mode (default: test).")

    def handle(self, *args: Any, url: str, api_key: str | None, live: bool, **options: Any):
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CommandError(f"--url must be an http(s) URL: {url!r}")
        try:
            result = register_webhook_endpoint(
                url, events=RECEIVED_EVENTS, api_key=api_key, livemode=live
            )
        except StripeUnavailable as exc:
            raise CommandError(f"Stripe refused the webhook endpoint: {exc.message}") from exc
        action = "Created" if result.created else "Updated"
        self.say(f"{action} Stripe webhook endpoint {result.stripe_id}.", style=self.style.SUCCESS)
        self.say(f"Events: {', '.join(result.events)}", level=2)
        self.say(f"Stripe posts to: {result.url}")
