"""kernia_billing.E016/E017: a price that sells two things, or the wrong kind of price."""

from __future__ import annotations

import pytest

from kernia_billing.checks import check_addon_topup_prices
from kernia_billing.models import AddOn, AddOnPrice, TopUpPack
from tests.factories import CatalogPriceFactory, FeatureFactory, PlanFactory, PlanPriceFactory


@pytest.mark.django_db
def test_a_price_mapped_to_a_plan_and_an_addon_is_e016_and_wrong_kinds_are_e017():
    assert check_addon_topup_prices(databases=["default"]) == []
    price = CatalogPriceFactory(price_type="recurring")
    PlanPriceFactory(plan=PlanFactory(), price=price)
    AddOnPrice.objects.create(addon=AddOn.objects.create(key="boost", name="Boost"), price=price)
    one_time = CatalogPriceFactory(price_type="recurring")
    TopUpPack.objects.create(
        key="pack", name="Pack", feature=FeatureFactory(), amount=10, price=one_time
    )
    ids = sorted(m.id for m in check_addon_topup_prices(databases=["default"]))
    assert ids == ["kernia_billing.E016", "kernia_billing.E017"]
