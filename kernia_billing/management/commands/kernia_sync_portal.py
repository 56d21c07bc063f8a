"""Create or update the billing portal configuration kernia keeps in Stripe.

Examples::

    python manage.py kernia_sync_portal
    python manage.py kernia_sync_portal --api-key sk_test_...

Its ``subscription_update`` lists exactly the mapped plans' approved prices, so the
hosted portal switches only between mapped plans. ``kernia_load_catalog`` runs the same
refresh after a load, and portal sessions check it before they open.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.subscriptions.portal import sync_portal_configuration


class Command(BillingCommand):
    help = "Create or update the billing portal configuration (mapped plans' prices)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--api-key", help="Stripe secret key (default: dj-stripe's configured key)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = sync_portal_configuration(api_key=options.get("api_key"))
        except StripeUnavailable as exc:
            raise CommandError(f"Portal configuration not refreshed. {exc.message}") from exc
        prices = sum(len(p["prices"]) for p in result.products)
        self.say(
            f"Portal configuration {result.configuration_id} {result.outcome}: "
            f"{len(result.products)} products, {prices} prices.",
            style=self.style.SUCCESS,
        )
