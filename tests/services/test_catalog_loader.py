"""Loading a catalog file: features, plans, plan features and price mappings."""

from __future__ import annotations

import copy
import json

import pytest

from kernia_billing.exceptions import CatalogError
from kernia_billing.models import (
    CatalogPrice,
    Feature,
    Plan,
    PlanFeature,
    PlanPrice,
    ReviewState,
)
from kernia_billing.services import catalog
from kernia_billing.services.customers import get_or_create_customer
from tests.catalog_support import EXAMPLE_CATALOG, seed_example_stripe, table_snapshot
from tests.factories import PlanFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def example():
    return json.loads(EXAMPLE_CATALOG.read_text())


@pytest.fixture
def synced(fake_stripe):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    return prices


def test_example_catalog_loads_and_reloading_changes_nothing(synced, example):
    result = catalog.load_catalog(example, approve=True)

    assert (result.features_created, result.plans_created) == (4, 3)
    # Four plan prices are mapped; Team's overage, the top-up's and the add-on's prices
    # are approved too (the catalog references them).
    assert (result.prices_mapped, result.prices_approved) == (4, 7)
    assert Plan.objects.get(is_default=True).key == "free"
    pro = Plan.objects.get(key="pro")
    assert sorted(pro.plan_prices.values_list("price__lookup_key", flat=True)) == [
        "pro_annual",
        "pro_monthly",
    ]
    messages = PlanFeature.objects.get(plan=pro, feature__key="messages").as_seed_dict()
    assert messages | {"unlimited": False} == {
        "key": "messages",
        "kind": "metered",
        "included": 10000,
        "unlimited": False,
        "resetPeriod": "month",
        "allowOverage": False,
        "includedFromQuantity": False,
    }
    assert PlanFeature.objects.get(plan__key="team", feature__key="seats").included_from_quantity

    before = table_snapshot()
    again = catalog.load_catalog(example)
    assert not again.changed
    assert table_snapshot() == before


def test_unknown_lookup_key_is_refused_and_nothing_written(synced, example):
    example["plans"][1]["prices"].append("lookup:does_not_exist")
    example["plans"][2]["prices"].append("price_nope")

    with pytest.raises(CatalogError) as excinfo:
        catalog.load_catalog(example, approve=True)

    assert "'does_not_exist'" in excinfo.value.message
    assert "'price_nope'" in excinfo.value.message
    assert not Feature.objects.exists() and not Plan.objects.exists()
    assert not CatalogPrice.objects.filter(review_state=ReviewState.APPROVED).exists()


def test_unreviewed_prices_are_refused_unless_approved_explicitly(synced, example):
    with pytest.raises(CatalogError, match="--approve") as excinfo:
        catalog.load_catalog(example)
    assert synced["pro_monthly"] in excinfo.value.message
    assert not Plan.objects.exists()

    catalog.approve(CatalogPrice.objects.all(), None)
    assert catalog.load_catalog(example).prices_mapped == 4


def test_model_validation_errors_roll_back_the_whole_file(synced, example):
    bad = copy.deepcopy(example)
    # The last plan is invalid: a boolean feature cannot reset; included cannot be negative.
    bad["plans"][2]["features"][3] = {"key": "sso", "resetPeriod": "month"}
    bad["plans"][2]["features"][0]["included"] = -1

    with pytest.raises(CatalogError) as excinfo:
        catalog.load_catalog(bad, approve=True)

    message = excinfo.value.message
    assert "A boolean feature does not reset" in message
    assert "included" in message
    assert not Plan.objects.exists() and not Feature.objects.exists()
    assert not PlanPrice.objects.exists()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["features"].append({"key": "x", "kind": "magic"}), "kind must be one of"),
        (lambda d: d["plans"][1]["prices"].append("lookup:team_monthly"), "a price maps to one"),
        (lambda d: d["plans"][1].update(isDefault=True), "only one plan can be the default"),
        (lambda d: d["plans"][0]["features"].append({"key": "ghost"}), "unknown feature"),
        (lambda d: d["plans"][0].update(displayOrder="1"), "must be a int"),
        (lambda d: d.update(extra=1), "unknown keys"),
    ],
)
def test_refusals(synced, example, mutate, expected):
    mutate(example)
    with pytest.raises(CatalogError, match=expected):
        catalog.load_catalog(example, approve=True)
    assert not Plan.objects.exists()


def test_price_mapped_to_a_plan_outside_the_file_is_refused(synced, example):
    legacy = PlanFactory(key="legacy")
    price = CatalogPrice.objects.get(lookup_key="pro_monthly")
    catalog.approve([price], None)
    catalog.map_prices_to_plan([price], legacy)

    with pytest.raises(CatalogError, match="already mapped to plan 'legacy'"):
        catalog.load_catalog(example, approve=True)


def test_reload_follows_the_file_and_resyncs_customers(synced, example):
    catalog.load_catalog(example, approve=True)
    customer = get_or_create_customer(UserFactory())
    assert customer.plan.key == "free"
    assert customer.entitlements.get(feature__key="messages").included == 100

    example["plans"][0]["features"] = [{"key": "messages", "included": 250, "resetPeriod": "month"}]
    example["plans"][1]["prices"] = ["lookup:pro_monthly"]
    result = catalog.load_catalog(example)

    assert result.plan_features_updated == 1 and result.plan_features_removed == 2
    assert result.prices_unmapped == 1
    assert customer.entitlements.get(feature__key="messages").included == 250
    assert not PlanPrice.objects.filter(price__lookup_key="pro_annual").exists()


def test_dry_run_writes_nothing(synced, example):
    result = catalog.load_catalog(example, approve=True, dry_run=True)
    assert result.dry_run and result.plans_created == 3
    assert not Plan.objects.exists()
    assert not CatalogPrice.objects.filter(review_state=ReviewState.APPROVED).exists()


@pytest.mark.django_db
def test_switching_the_default_plan_in_the_file_moves_customers_without_subscription():
    import kernia_billing
    from kernia_billing.services.catalog import load_catalog
    from tests.factories import UserFactory

    features = [{"key": "messages", "kind": "metered"}]

    def catalog(default: str) -> dict:
        return {
            "features": features,
            "plans": [
                {
                    "key": "free",
                    "isDefault": default == "free",
                    "features": [{"key": "messages", "included": 10, "resetPeriod": "month"}],
                },
                {
                    "key": "starter",
                    "isDefault": default == "starter",
                    "features": [{"key": "messages", "included": 500, "resetPeriod": "month"}],
                },
            ],
        }

    load_catalog(catalog("free"))
    user = UserFactory()
    assert kernia_billing.check(user, "messages").plan == "free"
    load_catalog(catalog("starter"))
    result = kernia_billing.check(user, "messages")
    assert (result.plan, result.included) == ("starter", 500)
