"""Prepare the demo SaaS: Stripe catalog, webhook endpoint, catalog review and mapping, users.

``scripts/demo`` runs this after ``migrate`` and before ``runserver``; the browser
tests call it against their live server. Safe to re-run.

Examples::

    python manage.py demo_setup                                  # fake Stripe on :12111
    python manage.py demo_setup --base-url http://127.0.0.1:8000
    python manage.py demo_setup --no-webhook                     # real Stripe test keys

Steps:

1. Make sure every meter and price of the Stripe seed file exists (found by event name
   and lookup key; created through the Stripe SDK otherwise), so a real Stripe test
   account works too. Team bills messages over its 50,000 through the
   ``messages_overage`` meter at $0.01 each.
2. Register a webhook endpoint for ``{base-url}/stripe/webhook/<uuid>/`` in Stripe and
   in dj-stripe, sharing its signing secret (skipped with ``--no-webhook``: real Stripe
   cannot reach 127.0.0.1; use ``stripe listen --forward-to`` there).
3. ``kernia_sync_catalog`` then ``kernia_load_catalog <catalog> --approve`` (approves the
   referenced prices), then approves the products of those prices.
4. Demo users: admin/admin (superuser), alice/alice, bob/bob in organization "Acme".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import stripe
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from example_project.accounts.models import Membership, Organization
from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.models import CatalogProduct, ReviewState
from kernia_billing.services import catalog
from kernia_billing.services.webhook_endpoints import register_webhook_endpoint
from kernia_billing.testing.fake_stripe.server import with_meter_id
from kernia_billing.webhooks import RECEIVED_EVENTS

EXAMPLE_DIR = Path(__file__).resolve().parents[3]
DEFAULT_SEED = EXAMPLE_DIR / "stripe_catalog.json"
DEFAULT_CATALOG = EXAMPLE_DIR / "catalog.json"

#: (username, password, is_superuser, organization or None)
DEMO_USERS: tuple[tuple[str, str, bool, str | None], ...] = (
    ("admin", "admin", True, None),
    ("alice", "alice", False, None),
    ("bob", "bob", False, "Acme"),
)


class Command(BaseCommand):
    help = "Set up the demo: Stripe catalog, webhook endpoint, plans and demo users."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Where the demo is served; Stripe delivers webhooks there.",
        )
        parser.add_argument("--seed", type=Path, default=DEFAULT_SEED, help="Stripe seed file.")
        parser.add_argument(
            "--catalog", type=Path, default=DEFAULT_CATALOG, help="kernia catalog file."
        )
        parser.add_argument(
            "--no-webhook", action="store_true", help="Do not register a webhook endpoint."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = settings.STRIPE_TEST_SECRET_KEY
        try:
            created = ensure_stripe_catalog(_read_json(options["seed"]), api_key=api_key)
            self.stdout.write(f"Stripe catalog: {created} price(s) created, others present.")
            if not options["no_webhook"]:
                url = register_webhook_endpoint(
                    options["base_url"], events=RECEIVED_EVENTS, api_key=api_key
                ).url
                self.stdout.write(f"Webhook endpoint: {url}")
        except (stripe.StripeError, StripeUnavailable) as exc:
            raise CommandError(
                f"Stripe at {stripe.api_base} refused or is unreachable: {exc}"
            ) from exc
        call_command("kernia_sync_catalog", stdout=self.stdout, stderr=self.stderr)
        call_command(
            "kernia_load_catalog",
            str(options["catalog"]),
            approve=True,
            stdout=self.stdout,
            stderr=self.stderr,
        )
        approved = approve_mapped_products()
        self.stdout.write(f"Products approved (their prices are mapped): {approved}.")
        create_demo_users()
        self.stdout.write(self.style.SUCCESS("Demo ready: admin/admin, alice/alice, bob/bob."))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"Cannot read {path}: {exc}") from exc


def ensure_meters(seed: dict[str, Any], *, api_key: str) -> dict[str, str]:
    """Create the seed's billing meters that Stripe lacks (found by event name); returns
    event name -> meter id."""
    meters = {
        meter.event_name: meter.id
        for meter in stripe.billing.Meter.list(limit=100, api_key=api_key).auto_paging_iter()
    }
    for meter in seed.get("meters", []):
        if meter["event_name"] not in meters:
            meters[meter["event_name"]] = stripe.billing.Meter.create(api_key=api_key, **meter).id
    return meters


def ensure_stripe_catalog(seed: dict[str, Any], *, api_key: str) -> int:
    """Create the seed's meters, products and prices that Stripe lacks (by event name and
    lookup key). A metered price names its meter as ``event_name:<name>`` in the seed."""
    meters = ensure_meters(seed, api_key=api_key)
    created = 0
    for product_data in seed.get("products", []):
        prices = product_data.get("prices", [])
        keys = [price["lookup_key"] for price in prices]
        found = stripe.Price.list(lookup_keys=keys, limit=100, api_key=api_key).data
        present = {price.lookup_key for price in found}
        missing = [price for price in prices if price["lookup_key"] not in present]
        if not missing:
            continue
        product_id = found[0].product if found else None
        if product_id is None:
            fields = {key: value for key, value in product_data.items() if key != "prices"}
            product_id = stripe.Product.create(api_key=api_key, **fields).id
        for price in missing:
            stripe.Price.create(api_key=api_key, product=product_id, **with_meter_id(price, meters))
            created += 1
    return created


def approve_mapped_products() -> int:
    """Approve the pending products whose prices the catalog file mapped, as a reviewer would."""
    products = CatalogProduct.objects.filter(
        review_state=ReviewState.PENDING, prices__plan_mapping__isnull=False
    ).distinct()
    return catalog.approve(list(products))


def create_demo_users() -> None:
    """admin (superuser), alice (personal), bob (member of Acme); passwords = usernames."""
    user_model = get_user_model()
    with transaction.atomic():
        for username, password, superuser, organization_name in DEMO_USERS:
            user, _ = user_model._default_manager.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            user.is_staff = user.is_superuser = superuser
            user.set_password(password)
            user.save()
            if organization_name:
                organization, _ = Organization.objects.get_or_create(
                    slug=organization_name.lower(),
                    defaults={"name": organization_name, "email": "billing@acme.example"},
                )
                Membership.objects.get_or_create(
                    organization=organization, user=user, defaults={"role": "owner"}
                )
