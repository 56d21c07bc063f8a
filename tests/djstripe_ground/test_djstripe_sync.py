"""dj-stripe's own sync runs through the real SDK, over HTTP, against the fake Stripe."""

from __future__ import annotations

import pytest
import stripe
from djstripe.models import Price, Product

pytestmark = pytest.mark.django_db


def test_product_and_price_sync_through_sdk_and_http(stripe_settings, fake_stripe):
    product = stripe.Product.create(name="Pro", description="For teams")
    monthly = stripe.Price.create(
        product=product.id,
        unit_amount=1200,
        currency="usd",
        recurring={"interval": "month"},
        lookup_key="pro_monthly",
    )
    key = stripe_settings.STRIPE_TEST_SECRET_KEY

    for data in stripe.Product.list(api_key=key).auto_paging_iter():
        Product.sync_from_stripe_data(data, api_key=key)
    for data in stripe.Price.list(api_key=key, expand=["data.product"]).auto_paging_iter():
        Price.sync_from_stripe_data(data, api_key=key)

    synced = Price.objects.get(id=monthly.id)
    assert (synced.unit_amount, synced.currency, synced.lookup_key) == (1200, "usd", "pro_monthly")
    assert synced.recurring["interval"] == "month"
    assert synced.product.name == "Pro"
    assert Product.objects.get(id=product.id).description == "For teams"

    paths = [(r.method, r.path) for r in fake_stripe.requests]
    assert ("GET", "/v1/products") in paths
    assert ("GET", "/v1/prices") in paths
    listed = [r for r in fake_stripe.requests if r.path == "/v1/prices" and r.method == "GET"]
    assert listed[0].query["expand"] == ["data.product"]
    assert all(r.api_key == key for r in listed)
    assert all(r.stripe_version == stripe_settings.STRIPE_API_VERSION for r in listed)
