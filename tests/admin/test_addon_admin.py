"""The admin maps add-ons and top-up packs to prices, refusing the wrong kind of price."""

from __future__ import annotations

import pytest

from kernia_billing.models import TopUpPack
from tests.factories import CatalogPriceFactory, FeatureFactory


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["/admin/kernia_billing/addon/add/", "/admin/kernia_billing/topuppack/add/"]
)
def test_add_pages_render(admin_client, url):
    assert admin_client.get(url).status_code == 200


@pytest.mark.django_db
def test_a_pack_on_a_recurring_price_is_refused_and_on_a_one_time_price_saved(admin_client):
    feature = FeatureFactory(key="messages")
    recurring = CatalogPriceFactory(price_type="recurring")
    one_time = CatalogPriceFactory(price_type="one_time", recurring_interval="")
    data = {"key": "pack", "name": "Pack", "feature": feature.pk, "amount": 1000, "active": "on"}
    url = "/admin/kernia_billing/topuppack/add/"
    refused = admin_client.post(url, {**data, "price": recurring.pk})
    assert refused.status_code == 200 and b"one-time price" in refused.content
    assert not TopUpPack.objects.exists()
    saved = admin_client.post(url, {**data, "price": one_time.pk})
    assert saved.status_code == 302
    assert TopUpPack.objects.get().price == one_time
