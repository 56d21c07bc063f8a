"""Meters come in with the catalog; a plan feature maps a metered price as its overage price."""

from __future__ import annotations

import pytest

from kernia_billing.exceptions import CatalogError
from kernia_billing.models import CatalogPrice, Meter, PlanFeature, ReviewState
from kernia_billing.services import catalog


@pytest.fixture
def stripe_catalog(db, stripe_settings, fake_stripe):
    meter = fake_stripe.create_meter(
        display_name="Messages",
        event_name="messages_overage",
        default_aggregation={"formula": "sum"},
    )
    product = fake_stripe.create_product(name="Team")
    fake_stripe.create_price(
        product=product["id"],
        currency="usd",
        unit_amount=4900,
        recurring={"interval": "month"},
        lookup_key="team_monthly",
    )
    fake_stripe.create_price(
        product=product["id"],
        currency="usd",
        unit_amount=1,
        recurring={"interval": "month", "usage_type": "metered", "meter": meter["id"]},
        lookup_key="messages_overage",
    )
    catalog.sync_catalog()
    return meter


def _document(**feature):
    return {
        "plans": [
            {
                "key": "team",
                "name": "Team",
                "prices": ["lookup:team_monthly"],
                "features": [
                    {
                        "key": "messages",
                        "kind": "metered",
                        "included": 10000,
                        "resetPeriod": "billing",
                        **feature,
                    },
                ],
            }
        ]
    }


def test_sync_imports_meters_for_review_and_the_meter_of_metered_prices(stripe_catalog):
    meter = Meter.objects.get()
    assert (meter.stripe_id, meter.event_name, meter.status) == (
        stripe_catalog["id"],
        "messages_overage",
        "active",
    )
    assert meter.review_state == ReviewState.PENDING
    price = CatalogPrice.objects.get(lookup_key="messages_overage")
    assert (price.usage_type, price.stripe_meter_id) == ("metered", stripe_catalog["id"])
    result = catalog.sync_catalog()
    assert result.meters_unchanged == 1 and result.meters_created == 0


def test_catalog_file_maps_an_overage_price(stripe_catalog):
    catalog.load_catalog(_document(overagePrice="lookup:messages_overage"), approve=True)
    pf = PlanFeature.objects.get()
    assert pf.overage_price.lookup_key == "messages_overage"
    assert pf.allow_overage  # an overage price implies overage is allowed
    assert pf.as_seed_dict()["overagePrice"] == "lookup:messages_overage"


def test_an_unapproved_or_licensed_overage_price_is_refused(stripe_catalog):
    with pytest.raises(CatalogError) as refused:
        catalog.load_catalog(_document(overagePrice="lookup:messages_overage"))
    assert "not approved" in str(refused.value.fields)
    with pytest.raises(CatalogError) as refused:
        catalog.load_catalog(_document(overagePrice="lookup:team_monthly"), approve=True)
    assert "metered price with a meter" in str(refused.value.fields)
