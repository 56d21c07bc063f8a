"""Load features, plans, plan features and price mappings from a JSON file.

Keep the mapping in version control and load it on deploy::

    python manage.py kernia_sync_catalog                 # import Stripe prices first
    python manage.py kernia_load_catalog catalog.json
    python manage.py kernia_load_catalog catalog.json --approve   # approve referenced prices
    python manage.py kernia_load_catalog catalog.json --dry-run   # validate, write nothing

The file::

    {
      "features": [
        {"key": "messages", "name": "Messages", "kind": "metered", "unit": "messages"},
        {"key": "seats", "kind": "seats"},
        {"key": "sso", "kind": "boolean"}
      ],
      "plans": [
        {"key": "free", "name": "Free", "isDefault": true, "displayOrder": 0,
         "features": [{"key": "messages", "included": 100, "resetPeriod": "month"}]},
        {"key": "pro", "name": "Pro", "displayOrder": 1,
         "prices": ["lookup:pro_monthly", "lookup:pro_annual"],
         "features": [
           {"key": "messages", "kind": "metered", "included": 10000,
            "resetPeriod": "month", "allowOverage": false},
           {"key": "sso"}
         ]}
      ]
    }

- ``addons[]`` / ``topups[]``: add-ons and top-up packs (see
  :mod:`kernia_billing.services.catalog.addons_loader` and the README).
- ``features[]``: ``key`` (slug), ``kind`` (boolean|metered|seats|quantity), optional
  ``name``, ``unit``, ``description``, ``archived``.
- ``plans[]``: ``key``, optional ``name``, ``description``, ``isDefault`` (at most one),
  ``active`` (default true), ``displayOrder`` (default: position in the file),
  ``prices`` (Stripe price ids ``"price_..."`` or ``"lookup:<lookup key>"``) and
  ``features`` in the seed's shape: ``key``, ``included`` (>= 0), ``unlimited``,
  ``resetPeriod`` (none|day|week|month|year|billing), ``allowOverage``,
  ``includedFromQuantity`` (seats follow the subscription quantity), ``overagePrice``
  (a metered Stripe price with a meter, ``"lookup:messages_overage"``, that bills usage
  beyond ``included``; implies ``allowOverage``; with ``included`` 0 the feature is
  pay-as-you-go), and optionally ``kind``/``name`` to declare the feature inline.

A plan in the file gets exactly the features and prices listed (others are removed
from it); plans and features not in the file are left alone. Prices must have been
imported (``kernia_sync_catalog``) and approved, unless ``--approve`` approves them.
Any problem is reported with all the others and nothing is written. Loading the same
file again changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import CatalogError, StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.catalog import load_catalog
from kernia_billing.services.subscriptions.portal import sync_portal_configuration


class Command(BillingCommand):
    help = "Load features, plans and Stripe price mappings from a JSON catalog file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="Path to the catalog JSON file.")
        parser.add_argument(
            "--approve",
            action="store_true",
            help="Approve the referenced Stripe prices that are not approved yet.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Validate and report; write nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror or exc}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from exc
        self.say(f"Loading {path}…", level=2)
        try:
            result = load_catalog(data, approve=options["approve"], dry_run=options["dry_run"])
        except CatalogError as exc:
            raise CommandError(exc.message) from exc
        self.say(
            f"Features: {result.features_created} created, {result.features_updated} updated.\n"
            f"Plans: {result.plans_created} created, {result.plans_updated} updated.\n"
            f"Plan features: {result.plan_features_created} created, "
            f"{result.plan_features_updated} updated, {result.plan_features_removed} removed.\n"
            f"Prices: {result.prices_mapped} mapped, {result.prices_unmapped} unmapped, "
            f"{result.prices_approved} approved."
            + (
                f"\nAdd-ons: {result.addons_loaded} loaded. Top-up packs: "
                f"{result.topups_loaded} loaded."
                if result.addons_loaded or result.topups_loaded
                else ""
            )
        )
        if result.dry_run:
            self.say("Dry run: nothing was written.", style=self.style.WARNING)
        elif result.changed:
            self.say("Catalog loaded.", style=self.style.SUCCESS)
        else:
            self.say("Catalog already up to date; nothing changed.", style=self.style.SUCCESS)
        if not result.dry_run:
            self._refresh_portal()

    def _refresh_portal(self) -> None:
        """plan changes: the portal configuration follows the mapped prices."""
        try:
            portal = sync_portal_configuration()
        except StripeUnavailable as exc:
            self.say(
                f"Portal configuration not refreshed (run kernia_sync_portal): {exc.message}",
                style=self.style.WARNING,
            )
            return
        if portal.outcome != "unchanged":
            self.say(f"Portal configuration {portal.configuration_id} {portal.outcome}.", level=2)
