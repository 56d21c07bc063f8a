"""Review and mapping rules, and the constraints the database enforces."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from kernia_billing import selectors
from kernia_billing.exceptions import CatalogError
from kernia_billing.models import CatalogPrice, PlanPrice, ReviewState
from kernia_billing.services import catalog
from tests.factories import (
    CatalogPriceFactory,
    CatalogProductFactory,
    PlanFactory,
    PlanPriceFactory,
    StaffFactory,
)

pytestmark = pytest.mark.django_db


def test_approve_records_who_when_and_what_was_reviewed():
    staff = StaffFactory()
    price = CatalogPriceFactory(review_state=ReviewState.PENDING, fingerprint="abc")
    product = CatalogProductFactory(fingerprint="def")

    assert catalog.approve([price, product], staff) == 2

    price.refresh_from_db()
    product.refresh_from_db()
    assert price.review_state == product.review_state == ReviewState.APPROVED
    assert price.reviewed_by == staff and price.reviewed_at is not None
    assert price.reviewed_fingerprint == "abc"
    assert product.reviewed_fingerprint == "def"


def test_ignore_refuses_mapped_prices_and_writes_nothing():
    mapped = PlanPriceFactory().price
    free = CatalogPriceFactory(review_state=ReviewState.PENDING)

    with pytest.raises(CatalogError, match=mapped.stripe_id):
        catalog.ignore([free, mapped], None)

    free.refresh_from_db()
    assert free.review_state == ReviewState.PENDING
    assert catalog.ignore([free], None) == 1
    free.refresh_from_db()
    assert free.review_state == ReviewState.IGNORED


def test_map_refuses_unapproved_and_mapped_elsewhere_and_writes_nothing():
    pro, team = PlanFactory(key="pro"), PlanFactory(key="team")
    ok = CatalogPriceFactory()
    pending = CatalogPriceFactory(review_state=ReviewState.PENDING)
    elsewhere = PlanPriceFactory(plan=team).price

    with pytest.raises(CatalogError) as excinfo:
        catalog.map_prices_to_plan([ok, pending, elsewhere], pro)

    message = excinfo.value.message
    assert pending.stripe_id in message and "not approved" in message
    assert elsewhere.stripe_id in message and "'team'" in message
    assert not PlanPrice.objects.filter(plan=pro).exists()


def test_map_is_idempotent_and_a_plan_can_hold_monthly_and_annual():
    pro = PlanFactory(key="pro")
    monthly = CatalogPriceFactory(recurring_interval="month", unit_amount=1200)
    annual = CatalogPriceFactory(recurring_interval="year", unit_amount=12000)

    assert catalog.map_prices_to_plan([monthly, annual], pro) == 2
    assert catalog.map_prices_to_plan([monthly, annual], pro) == 0
    assert set(pro.plan_prices.values_list("price__recurring_interval", flat=True)) == {
        "month",
        "year",
    }


def test_database_allows_a_price_in_one_plan_only():
    mapping = PlanPriceFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        PlanPrice.objects.create(plan=PlanFactory(), price=mapping.price)


def test_database_allows_one_default_plan_only():
    PlanFactory(key="free", is_default=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        PlanFactory(key="other", is_default=True)


def test_human_readable_prices():
    assert (
        CatalogPrice(
            unit_amount=1200, currency="usd", recurring_interval="month"
        ).human_readable_amount
        == "$12.00 / month"
    )
    assert (
        CatalogPrice(
            unit_amount=12000, currency="usd", recurring_interval="year"
        ).human_readable_amount
        == "$120.00 / year"
    )


def test_a_product_is_reviewed_when_its_prices_are_and_the_count_reaches_zero(fake_stripe):
    from tests.catalog_support import seed_example_stripe

    seed_example_stripe(fake_stripe)
    assert catalog.sync_catalog().pending_review == 7
    pro_prices = CatalogPrice.objects.filter(product__name="Pro")
    team_prices = CatalogPrice.objects.filter(product__name="Team")

    catalog.approve(list(pro_prices[:1]))
    assert pro_prices.first().product.review_state == ReviewState.PENDING  # one left
    catalog.approve(list(pro_prices))
    catalog.ignore(list(team_prices))
    catalog.ignore(list(CatalogPrice.objects.exclude(product__name__in=["Pro", "Team"])))

    pro = pro_prices.first().product
    team = team_prices.first().product
    pro.refresh_from_db()
    team.refresh_from_db()
    assert (pro.review_state, team.review_state) == (ReviewState.APPROVED, ReviewState.IGNORED)
    assert catalog.sync_catalog().pending_review == 0
    assert selectors.pending_review_count() == 0


def test_a_product_with_no_price_awaits_its_own_review():
    lonely = CatalogProductFactory(review_state=ReviewState.PENDING)
    CatalogPriceFactory(review_state=ReviewState.PENDING)  # its product waits on it

    assert selectors.pending_review_count() == 2  # the price, and the product without one
    catalog.approve([lonely])
    assert selectors.pending_review_count() == 1
