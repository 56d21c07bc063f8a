"""kernia_load_catalog's "addons" and "topups" sections."""

from __future__ import annotations

import pytest

from kernia_billing.exceptions import CatalogError
from kernia_billing.models import AddOn, ReviewState, TopUpPack
from kernia_billing.services.catalog.loader import load_catalog
from tests.factories import CatalogPriceFactory, FeatureFactory


@pytest.mark.django_db
def test_addons_and_topups_load_and_the_review_gate_holds():
    FeatureFactory(key="seats", kind="seats")
    FeatureFactory(key="messages", kind="metered")
    seats_price = CatalogPriceFactory(lookup_key="seats_5", review_state=ReviewState.PENDING)
    pack_price = CatalogPriceFactory(
        lookup_key="messages_1000", price_type="one_time", recurring_interval=""
    )
    document = {
        "addons": [
            {
                "key": "extra-seats",
                "name": "Extra seats",
                "features": [{"key": "seats", "amount": 5}],
                "prices": ["lookup:seats_5"],
            }
        ],
        "topups": [
            {
                "key": "messages-1000",
                "name": "1,000 messages",
                "feature": "messages",
                "amount": 1000,
                "expiresAfterDays": 365,
                "price": "lookup:messages_1000",
            }
        ],
    }
    with pytest.raises(CatalogError, match="not approved"):
        load_catalog(document)
    assert not AddOn.objects.exists()
    result = load_catalog(document, approve=True)
    assert (result.addons_loaded, result.topups_loaded) == (1, 1)
    addon = AddOn.objects.get(key="extra-seats")
    assert [(f.feature.key, f.amount) for f in addon.addon_features.all()] == [("seats", 5)]
    assert addon.addon_prices.get().price == seats_price
    pack = TopUpPack.objects.get(key="messages-1000")
    assert (pack.amount, pack.expires_after_days, pack.price) == (1000, 365, pack_price)
    # Loading the same file again changes nothing and says so; a changed amount counts.
    again = load_catalog(document, approve=True)
    assert (again.addons_loaded, again.topups_loaded, again.changed) == (0, 0, False)
    document["addons"][0]["features"][0]["amount"] = 10
    assert load_catalog(document, approve=True).addons_loaded == 1
    document["addons"][0]["features"][0]["amount"] = 5
    load_catalog(document, approve=True)
    # A one-time price cannot sell an add-on: one error, nothing changed.
    document["addons"][0]["prices"] = ["lookup:messages_1000"]
    with pytest.raises(CatalogError):
        load_catalog(document)
    assert addon.addon_prices.get().price == seats_price
