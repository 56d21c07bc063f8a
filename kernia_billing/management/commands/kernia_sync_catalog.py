"""Import Stripe products and prices into the review queue (same code as the REST sync).

Examples::

    python manage.py kernia_sync_catalog
    python manage.py kernia_sync_catalog --api-key sk_test_...   # another key than settings
    python manage.py kernia_sync_catalog -v 0                    # silent unless it fails
    python manage.py kernia_sync_catalog --quiet                 # summary only

Every product and price (active and archived) is mirrored through dj-stripe and
queued for review in the admin (new or changed since review: pending). Nothing is
written when Stripe fails; the command then exits non-zero with Stripe's reason.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.catalog import sync_catalog


class Command(BillingCommand):
    help = "Import Stripe products and prices (active and archived) for review."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--api-key", help="Stripe secret key (default: dj-stripe's configured key)."
        )
        parser.add_argument("--quiet", action="store_true", help="Print the summary only.")

    def handle(self, *args: Any, **options: Any) -> None:
        def progress(message: str) -> None:
            if not options["quiet"]:
                self.say(message, level=1)

        progress("Syncing the catalog from Stripe…")
        try:
            result = sync_catalog(api_key=options.get("api_key"), progress=progress)
        except StripeUnavailable as exc:
            raise CommandError(f"Catalog sync failed; nothing was changed. {exc.message}") from exc
        self.say(
            f"Products: {result.products_created} created, {result.products_updated} "
            f"updated, {result.products_unchanged} unchanged. "
            f"Prices: {result.prices_created} created, {result.prices_updated} updated, "
            f"{result.prices_unchanged} unchanged.",
            style=self.style.SUCCESS,
        )
        self.say(f"{result.pending_review} awaiting review in the admin.")
        if result.flagged:
            self.say(
                f"{result.flagged} mapped price(s) are archived or deleted in Stripe; "
                "see `manage.py check --database default`.",
                style=self.style.WARNING,
            )
