"""Catalog sync against the fake Stripe over HTTP."""

from __future__ import annotations

from io import StringIO

import pytest
import stripe
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from djstripe.models import Price as StripePrice
from djstripe.models import Product as StripeProduct

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.models import CatalogPrice, CatalogProduct, ReviewState
from kernia_billing.selectors import flagged_mapped_prices
from kernia_billing.services import catalog
from tests.catalog_support import closed_port, seed_example_stripe, table_snapshot
from tests.factories import PlanFactory, StaffFactory

pytestmark = pytest.mark.django_db

WRITES = ("INSERT", "UPDATE", "DELETE")


def _writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(WRITES)
    ]


def test_sync_pages_through_more_than_a_hundred_prices_active_and_archived(fake_stripe):
    product = fake_stripe.create_product(name="Bulk")
    for amount in range(1, 131):
        fake_stripe.create_price(
            product=product["id"],
            currency="usd",
            unit_amount=amount,
            recurring={"interval": "month"},
        )
    archived = fake_stripe.create_price(
        product=product["id"], currency="usd", unit_amount=999, active=False
    )
    for n in range(105):
        fake_stripe.create_product(name=f"Extra {n}")

    result = catalog.sync_catalog()

    assert result.products_created == 106
    assert result.prices_created == 131
    # Every price, and the products without a price (the others are settled by their prices).
    assert result.pending_review == 131 + 105
    assert CatalogPrice.objects.count() == 131
    assert StripePrice.objects.count() == 131  # dj-stripe's mirror too
    assert StripeProduct.objects.count() == 106
    assert not CatalogPrice.objects.get(stripe_id=archived["id"]).active
    price_pages = [r for r in fake_stripe.requests if r.path == "/v1/prices"]
    assert any("starting_after" in r.query for r in price_pages), "second page was requested"
    assert {r.query.get("active") for r in price_pages} == {"true", "false"}


def test_resync_with_nothing_changed_writes_nothing(fake_stripe):
    seed_example_stripe(fake_stripe)
    first = catalog.sync_catalog()
    assert (first.products_created, first.prices_created, first.meters_created) == (4, 7, 1)
    before = table_snapshot()

    with CaptureQueriesContext(connection) as queries:
        second = catalog.sync_catalog()

    assert _writes(queries) == []
    assert table_snapshot() == before
    assert (second.created, second.updated, second.unchanged) == (0, 0, 11)
    assert second.pending_review == 7  # the 7 prices; their products follow them


def test_a_change_in_stripe_puts_a_reviewed_price_back_to_pending(fake_stripe):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    staff = StaffFactory()
    catalog.approve(CatalogPrice.objects.all(), staff)

    stripe.Price.modify(prices["pro_monthly"], lookup_key="pro_monthly_v2")
    stripe.Price.modify(prices["pro_annual"], nickname="renamed only")  # not reviewed data
    result = catalog.sync_catalog()

    assert result.prices_updated == 2
    changed = CatalogPrice.objects.get(stripe_id=prices["pro_monthly"])
    assert changed.review_state == ReviewState.PENDING
    assert changed.lookup_key == "pro_monthly_v2"
    renamed = CatalogPrice.objects.get(stripe_id=prices["pro_annual"])
    assert renamed.review_state == ReviewState.APPROVED
    assert renamed.nickname == "renamed only"
    assert CatalogPrice.objects.get(stripe_id=prices["team_monthly"]).review_state == "approved"


def test_archived_mapped_price_is_flagged_in_the_database_check(fake_stripe):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    pro = PlanFactory(key="pro")
    price = CatalogPrice.objects.get(stripe_id=prices["pro_monthly"])
    catalog.approve([price], None)
    catalog.map_prices_to_plan([price], pro)
    assert not [w for w in run_checks(databases=["default"]) if w.id == "kernia_billing.W001"]

    stripe.Price.modify(prices["pro_monthly"], active=False)
    result = catalog.sync_catalog()

    assert result.flagged == 1
    assert list(flagged_mapped_prices()) == [price]
    warnings = [w for w in run_checks(databases=["default"]) if w.id == "kernia_billing.W001"]
    assert len(warnings) == 1
    assert prices["pro_monthly"] in warnings[0].msg and "archived" in warnings[0].msg
    stderr = StringIO()
    call_command("check", "--database", "default", stdout=StringIO(), stderr=stderr)
    assert "kernia_billing.W001" in stderr.getvalue()


def test_price_deleted_in_stripe_is_marked_and_flagged_when_mapped(fake_stripe):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    price = CatalogPrice.objects.get(stripe_id=prices["team_annual"])
    catalog.approve([price], None)
    catalog.map_prices_to_plan([price], PlanFactory(key="team"))

    fake_stripe.delete_price(prices["team_annual"])
    result = catalog.sync_catalog()

    price.refresh_from_db()
    assert price.deleted_in_stripe
    assert result.prices_updated == 1
    assert result.flagged == 1
    assert catalog.sync_catalog().updated == 0  # marking it deleted happens once


def _assert_failure_leaves_tables(fake_stripe, provoke, expected_words):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    stripe.Price.modify(prices["pro_monthly"], active=False)
    fake_stripe.create_price(
        product=fake_stripe.create_product(name="New")["id"], currency="usd", unit_amount=5
    )
    before = table_snapshot()

    with pytest.raises(StripeUnavailable) as excinfo:
        provoke()

    assert table_snapshot() == before
    message = excinfo.value.message
    assert all(word in message for word in expected_words), message
    assert excinfo.value.status == 502


def test_bad_api_key_changes_nothing(fake_stripe):
    _assert_failure_leaves_tables(
        fake_stripe,
        lambda: catalog.sync_catalog(api_key="sk_test_wrong"),
        ["API key", "Invalid API Key"],
    )


def test_stripe_5xx_changes_nothing(fake_stripe):
    def provoke():
        # Products are fetched fine; the prices request fails: nothing may be written.
        fake_stripe.inject_fault("/v1/prices", status=500, times=5)
        catalog.sync_catalog()

    _assert_failure_leaves_tables(fake_stripe, provoke, ["HTTP 500"])


def test_unreachable_stripe_changes_nothing(fake_stripe):
    def provoke():
        stripe.api_base = f"http://127.0.0.1:{closed_port()}"
        catalog.sync_catalog()

    _assert_failure_leaves_tables(fake_stripe, provoke, ["Could not reach Stripe"])


def test_webhook_upserts_use_the_same_review_rules(fake_stripe):
    product = fake_stripe.create_product(name="Pro")
    price = fake_stripe.create_price(
        product=product["id"], currency="usd", unit_amount=1200, recurring={"interval": "month"}
    )
    # The price event may arrive before its product's.
    assert catalog.apply_stripe_price(price) == "created"
    assert catalog.apply_stripe_price(price) == "unchanged"
    assert catalog.apply_stripe_product(product) == "created"
    row = CatalogPrice.objects.get(stripe_id=price["id"])
    assert row.product == CatalogProduct.objects.get(stripe_id=product["id"])
    assert row.human_readable_amount == "$12.00 / month"

    catalog.approve([row], None)
    catalog.map_prices_to_plan([row], PlanFactory(key="pro"))
    assert catalog.apply_stripe_price({**price, "unit_amount": 1500}) == "updated"
    row.refresh_from_db()
    assert row.review_state == ReviewState.PENDING
    assert catalog.apply_stripe_price(price, deleted=True) == "updated"
    assert list(flagged_mapped_prices()) == [row]
