#!/usr/bin/env python
"""Regenerate the Stripe fixture data used by the fake Stripe server and its tests.

Reads Stripe's own OpenAPI fixtures (``fixtures3.json``, MIT licensed) and writes:

* ``tests/testing/data/stripe_fixture_keys.json``: resource name -> sorted list of
  the top-level keys Stripe's fixture object carries. The fake's tests assert
  that every object it serves has at least these keys.
* with ``--templates``: ``kernia_billing/testing/fake_stripe/resources.json``, the
  template objects the fake deep-copies when it creates a new object, plus the
  licence file next to it.

Neither the package nor the tests read the fixtures file itself, so it only has
to be present when this script runs::

    python scripts/extract_stripe_fixture_keys.py [--fixtures PATH] [--templates]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = Path("/work/shared/stripe/fixtures3.json")
KEYS_OUTPUT = ROOT / "tests" / "testing" / "data" / "stripe_fixture_keys.json"
TEMPLATES_OUTPUT = ROOT / "kernia_billing" / "testing" / "fake_stripe" / "resources.json"
LICENSE_OUTPUT = ROOT / "kernia_billing" / "testing" / "fake_stripe" / "STRIPE_FIXTURES_LICENSE"

#: Every resource the fake serves (or embeds in something it serves).
SERVED_RESOURCES: tuple[str, ...] = (
    "account",
    "billing_portal.session",
    "charge",
    "checkout.session",
    "customer",
    "deleted_customer",
    "deleted_product",
    "deleted_subscription_item",
    "deleted_webhook_endpoint",
    "event",
    "invoice",
    "invoice_payment",
    "invoiceitem",
    "item",
    "line_item",
    "payment_intent",
    "payment_method",
    "plan",
    "price",
    "product",
    "product_feature",
    "refund",
    "subscription",
    "subscription_item",
    "webhook_endpoint",
)


def load_resources(path: Path) -> dict[str, dict[str, object]]:
    """Return the ``resources`` mapping of a Stripe fixtures file."""
    with path.open(encoding="utf-8") as handle:
        resources: dict[str, dict[str, object]] = json.load(handle)["resources"]
    missing = [name for name in SERVED_RESOURCES if name not in resources]
    if missing:
        raise SystemExit(f"fixtures file lacks resources: {', '.join(missing)}")
    return resources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument(
        "--templates",
        action="store_true",
        help="also rewrite the fake's resources.json templates and licence file",
    )
    args = parser.parse_args(argv)

    resources = load_resources(args.fixtures)
    keys = {name: sorted(resources[name]) for name in SERVED_RESOURCES}
    KEYS_OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    KEYS_OUTPUT.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {KEYS_OUTPUT.relative_to(ROOT)}")

    if args.templates:
        templates = {
            "_source": "stripe/openapi fixtures3.json (MIT licence, see STRIPE_FIXTURES_LICENSE)",
            "resources": {name: resources[name] for name in SERVED_RESOURCES},
        }
        TEMPLATES_OUTPUT.write_text(
            json.dumps(templates, indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )
        licence = args.fixtures.parent / "LICENSE"
        if licence.exists():
            shutil.copyfile(licence, LICENSE_OUTPUT)
        print(f"wrote {TEMPLATES_OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
