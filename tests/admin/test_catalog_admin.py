"""The review queue, the sync button and plan editing, through Django's test client."""

from __future__ import annotations

import pytest
import stripe
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.urls import reverse

import kernia_billing
from kernia_billing.models import (
    CatalogPrice,
    CatalogProduct,
    Feature,
    Plan,
    PlanPrice,
    ReviewState,
)
from kernia_billing.services import catalog
from kernia_billing.services.customers import get_or_create_customer
from tests.catalog_support import seed_example_stripe, table_snapshot
from tests.factories import (
    CatalogPriceFactory,
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    PlanPriceFactory,
    StaffFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

PRICES = reverse("admin:kernia_billing_catalogprice_changelist")
PRODUCTS = reverse("admin:kernia_billing_catalogproduct_changelist")
SYNC = reverse("admin:kernia_billing_catalogprice_sync")


@pytest.fixture
def staff_client(client):
    client.force_login(StaffFactory())
    return client


@pytest.fixture
def user_client(client):
    client.force_login(UserFactory())
    return client


def _action(client, url, action, objects, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **extra}
    return client.post(url, data, follow=True)


def _messages(response):
    return [str(m) for m in response.context["messages"]]


def test_price_changelist_is_human_readable_filterable_and_searchable(staff_client):
    CatalogPriceFactory(unit_amount=1200, recurring_interval="month", lookup_key="pro_monthly")
    CatalogPriceFactory(
        unit_amount=12000,
        recurring_interval="year",
        lookup_key="pro_annual",
        review_state=ReviewState.PENDING,
    )

    page = staff_client.get(PRICES).content.decode()
    assert "$12.00 / month" in page and "$120.00 / year" in page
    assert "Sync from Stripe" in page

    pending = staff_client.get(PRICES, {"review_state__exact": "pending"}).content.decode()
    assert "$120.00 / year" in pending and "$12.00 / month" not in pending

    found = staff_client.get(PRICES, {"q": "pro_monthly"}).content.decode()
    assert "$12.00 / month" in found and "$120.00 / year" not in found


def test_imported_rows_are_read_only(staff_client):
    price = CatalogPriceFactory()
    change = reverse("admin:kernia_billing_catalogprice_change", args=[price.pk])
    assert staff_client.get(reverse("admin:kernia_billing_catalogprice_add")).status_code == 403
    staff_client.post(change, {"unit_amount": 1})
    price.refresh_from_db()
    assert price.unit_amount == 1200


def test_bulk_approve_and_ignore(staff_client):
    a, b = CatalogPriceFactory.create_batch(2, review_state=ReviewState.PENDING)
    product = CatalogProduct.objects.get(pk=a.product_id)

    response = _action(staff_client, PRICES, "approve_selected", [a])
    assert "1 approved." in _messages(response)
    _action(staff_client, PRICES, "ignore_selected", [b])
    _action(staff_client, PRODUCTS, "approve_selected", [product])

    a.refresh_from_db()
    b.refresh_from_db()
    product.refresh_from_db()
    assert (a.review_state, b.review_state) == (ReviewState.APPROVED, ReviewState.IGNORED)
    assert product.review_state == ReviewState.APPROVED
    assert a.reviewed_by is not None


def test_map_to_plan_asks_for_confirmation_then_maps(staff_client):
    pro = PlanFactory(key="pro", name="Pro")
    monthly = CatalogPriceFactory(recurring_interval="month")
    annual = CatalogPriceFactory(recurring_interval="year", unit_amount=12000)

    confirm = _action(staff_client, PRICES, "map_to_plan", [monthly, annual])
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Map prices to a plan" in page and "Pro (pro)" in page and "$120.00 / year" in page
    assert not PlanPrice.objects.exists()

    done = _action(staff_client, PRICES, "map_to_plan", [monthly, annual], post="yes", plan=pro.pk)
    assert "2 price(s) mapped to plan pro." in _messages(done)
    assert set(pro.plan_prices.values_list("price_id", flat=True)) == {monthly.pk, annual.pk}


def test_map_to_plan_refuses_unapproved_and_mapped_elsewhere(staff_client):
    pro = PlanFactory(key="pro")
    pending = CatalogPriceFactory(review_state=ReviewState.PENDING)
    elsewhere = PlanPriceFactory(plan=PlanFactory(key="team")).price

    done = _action(
        staff_client, PRICES, "map_to_plan", [pending, elsewhere], post="yes", plan=pro.pk
    )

    (message,) = _messages(done)
    assert "not approved" in message and pending.stripe_id in message
    assert "'team'" in message
    assert not PlanPrice.objects.filter(plan=pro).exists()


def test_map_to_plan_makes_staff_choose_the_plan(staff_client):
    PlanFactory(key="free", name="Free", is_default=True, display_order=0)
    pro = PlanFactory(key="pro", name="Pro", display_order=1)
    monthly = CatalogPriceFactory(unit_amount=9900)

    page = _action(staff_client, PRICES, "map_to_plan", [monthly]).content.decode()
    # The first option is the empty one, selected; no plan is pre-selected.
    select = page[page.index('<select name="plan"') : page.index("</select>")]
    assert '<option value="" selected>' in select
    assert select.count("selected") == 1
    assert "Free (free) — default plan" in select

    # Clicking through without choosing maps nothing.
    done = _action(staff_client, PRICES, "map_to_plan", [monthly], post="yes", plan="")
    assert _messages(done) == ["Choose a plan."]
    assert not PlanPrice.objects.exists()

    done = _action(staff_client, PRICES, "map_to_plan", [monthly], post="yes", plan=pro.pk)
    assert "1 price(s) mapped to plan pro." in _messages(done)


def test_map_to_plan_warns_about_prices_mapped_elsewhere(staff_client):
    PlanFactory(key="pro")
    elsewhere = PlanPriceFactory(plan=PlanFactory(key="team")).price
    fresh = CatalogPriceFactory()

    page = _action(staff_client, PRICES, "map_to_plan", [elsewhere, fresh]).content.decode()

    assert 'data-testid="mapped-elsewhere"' in page
    assert f"{elsewhere.stripe_id} (team)" in page


def test_map_to_plan_refuses_when_no_selected_price_is_approved(staff_client):
    PlanFactory(key="pro")
    pending = CatalogPriceFactory(review_state=ReviewState.PENDING)
    ignored = CatalogPriceFactory(review_state=ReviewState.IGNORED)

    response = _action(staff_client, PRICES, "map_to_plan", [pending, ignored])

    assert "Map prices to a plan" not in response.content.decode()
    (message,) = _messages(response)
    assert "None of the selected prices is approved" in message
    assert pending.stripe_id in message and ignored.stripe_id in message


def test_sync_button_runs_the_sync_and_reports_counts(staff_client, fake_stripe):
    seed_example_stripe(fake_stripe)

    response = staff_client.post(SYNC, follow=True)

    (message,) = _messages(response)
    assert "Products: 4 new" in message and "Prices: 7 new" in message
    assert "7 awaiting review" in message
    assert CatalogPrice.objects.count() == 7
    assert staff_client.get(SYNC).status_code == 405


def test_sync_button_reports_stripe_failure_and_changes_nothing(staff_client, fake_stripe):
    seed_example_stripe(fake_stripe)
    fake_stripe.inject_fault("/v1/prices", status=503, times=5)

    response = staff_client.post(SYNC, follow=True)

    (message,) = _messages(response)
    assert message.startswith("Sync failed: Stripe returned an error (HTTP 503)")
    assert not CatalogPrice.objects.exists() and not CatalogProduct.objects.exists()


def test_flagged_mapped_price_warns_in_the_admin(staff_client, fake_stripe):
    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    price = CatalogPrice.objects.get(stripe_id=prices["pro_annual"])
    catalog.approve([price], None)
    catalog.map_prices_to_plan([price], PlanFactory(key="pro"))
    stripe.Price.modify(prices["pro_annual"], active=False)
    catalog.sync_catalog()

    for url in (PRICES, reverse("admin:kernia_billing_plan_changelist")):
        response = staff_client.get(url)
        warnings = [m for m in _messages(response) if prices["pro_annual"] in m]
        assert warnings and "archived in Stripe" in warnings[0]
    assert "archived in Stripe" in staff_client.get(PRICES).content.decode()


def _plan_form(plan_key="pro", *, prices=(), features=(), initial_prices=0, initial_features=0):
    data = {
        "key": plan_key,
        "name": plan_key.title(),
        "description": "",
        "active": "on",
        "display_order": 1,
        "trial_days": 0,
        "plan_prices-TOTAL_FORMS": len(prices),
        "plan_prices-INITIAL_FORMS": initial_prices,
        "plan_features-TOTAL_FORMS": len(features),
        "plan_features-INITIAL_FORMS": initial_features,
    }
    for i, price in enumerate(prices):
        data[f"plan_prices-{i}-price"] = price
    for i, feature in enumerate(features):
        for name, value in feature.items():
            data[f"plan_features-{i}-{name}"] = value
    return data


def test_plan_admin_maps_approved_prices_and_features(staff_client):
    monthly = CatalogPriceFactory(recurring_interval="month")
    annual = CatalogPriceFactory(recurring_interval="year", unit_amount=12000)
    messages = FeatureFactory(key="messages")

    response = staff_client.post(
        reverse("admin:kernia_billing_plan_add"),
        _plan_form(
            prices=[monthly.pk, annual.pk],
            features=[{"feature": messages.pk, "included": 10000, "reset_period": "month"}],
        ),
    )

    assert response.status_code == 302, response.context["errors"]
    plan = Plan.objects.get(key="pro")
    assert plan.plan_prices.count() == 2
    assert plan.plan_features.get().included == 10000


def test_plan_admin_refuses_unapproved_and_mapped_elsewhere(staff_client):
    pending = CatalogPriceFactory(review_state=ReviewState.PENDING)
    elsewhere = PlanPriceFactory(plan=PlanFactory(key="team")).price

    response = staff_client.post(
        reverse("admin:kernia_billing_plan_add"), _plan_form(prices=[pending.pk, elsewhere.pk])
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Select a valid choice" in page  # pending prices are not offered
    assert f"Stripe price {elsewhere.stripe_id} is already mapped to plan team" in page
    assert not Plan.objects.filter(key="pro").exists()


def test_plan_admin_refuses_nonsense_plan_features(staff_client):
    sso = FeatureFactory(key="sso", kind="boolean")
    response = staff_client.post(
        reverse("admin:kernia_billing_plan_add"),
        _plan_form(features=[{"feature": sso.pk, "included": 0, "reset_period": "month"}]),
    )
    assert response.status_code == 200
    assert "A boolean feature does not reset." in response.content.decode()


def test_editing_plan_features_resyncs_its_customers(staff_client):
    free = PlanFactory(key="free", is_default=True)
    pf = PlanFeatureFactory(plan=free, feature=FeatureFactory(key="messages"), included=100)
    customer = get_or_create_customer(UserFactory())
    assert customer.entitlements.get().included == 100

    data = _plan_form(
        "free",
        features=[
            {
                "id": pf.pk,
                "plan": free.pk,
                "feature": pf.feature_id,
                "included": 500,
                "reset_period": "month",
            }
        ],
        initial_features=1,
    )
    data["is_default"] = "on"
    response = staff_client.post(reverse("admin:kernia_billing_plan_change", args=[free.pk]), data)

    assert response.status_code == 302, response.context["errors"]
    assert customer.entitlements.get().included == 500


def test_lowering_a_grant_says_how_many_customers_it_hurts_and_asks_first(staff_client):
    pro = PlanFactory(key="pro", is_default=True)
    pf = PlanFeatureFactory(plan=pro, feature=FeatureFactory(key="messages"), included=100)
    heavy, light = UserFactory(), UserFactory()
    kernia_billing.track(heavy, "messages", 80)
    kernia_billing.track(light, "messages", 5)
    url = reverse("admin:kernia_billing_plan_change", args=[pro.pk])
    feature_row = {
        "id": pf.pk,
        "plan": pro.pk,
        "feature": pf.feature_id,
        "included": 16,
        "reset_period": "month",
    }
    data = _plan_form("pro", features=[feature_row], initial_features=1)
    data["is_default"] = "on"

    refused = staff_client.post(url, data)

    assert refused.status_code == 200
    page = refused.content.decode()
    assert "lowering messages from 100 to 16 affects 2 customer(s) on this plan" in page
    assert "1 of them would be left with a negative balance" in page
    pf.refresh_from_db()
    assert pf.included == 100
    assert kernia_billing.check(heavy, "messages").balance == 20

    data["confirm_lower_grants"] = "on"
    assert staff_client.post(url, data).status_code == 302
    assert kernia_billing.check(heavy, "messages").balance == -64


def test_removing_a_granted_feature_asks_first(staff_client):
    pro = PlanFactory(key="pro", is_default=True)
    pf = PlanFeatureFactory(plan=pro, feature=FeatureFactory(key="messages"), included=100)
    kernia_billing.track(UserFactory(), "messages", 1)
    row = {"id": pf.pk, "plan": pro.pk, "feature": pf.feature_id, "included": 100}
    data = _plan_form("pro", features=[{**row, "DELETE": "on"}], initial_features=1)
    data["is_default"] = "on"

    refused = staff_client.post(reverse("admin:kernia_billing_plan_change", args=[pro.pk]), data)

    assert "removing messages affects 1 customer(s)" in refused.content.decode()
    assert pro.plan_features.exists()


def test_raising_a_grant_needs_no_confirmation(staff_client):
    pro = PlanFactory(key="pro", is_default=True)
    pf = PlanFeatureFactory(plan=pro, feature=FeatureFactory(key="messages"), included=100)
    kernia_billing.track(UserFactory(), "messages", 80)
    row = {"id": pf.pk, "plan": pro.pk, "feature": pf.feature_id, "included": 500}
    data = _plan_form("pro", features=[{**row, "reset_period": "month"}], initial_features=1)
    data["is_default"] = "on"

    assert (
        staff_client.post(
            reverse("admin:kernia_billing_plan_change", args=[pro.pk]), data
        ).status_code
        == 302
    )


def test_a_plan_with_customers_cannot_be_deleted_and_the_page_says_why(staff_client):
    pro = PlanFactory(key="pro", name="Pro", is_default=True)
    PlanFeatureFactory(plan=pro, feature=FeatureFactory(key="messages"), included=100)
    get_or_create_customer(UserFactory())
    url = reverse("admin:kernia_billing_plan_delete", args=[pro.pk])

    page = staff_client.get(url).content.decode()

    assert "Cannot delete plan" in page
    assert "1 billing customer(s) are on this plan" in page
    assert "Mark the plan inactive instead" in page
    assert "permission to delete" not in page
    staff_client.post(url, {"post": "yes"})
    assert Plan.objects.filter(pk=pro.pk).exists()

    bulk = _action(
        staff_client,
        reverse("admin:kernia_billing_plan_changelist"),
        "delete_selected",
        [pro],
        post="yes",
    )
    assert "1 billing customer(s) are on this plan" in bulk.content.decode()
    assert Plan.objects.filter(pk=pro.pk).exists()


def test_a_plan_without_customers_can_be_deleted(staff_client):
    team = PlanFactory(key="team")
    PlanFeatureFactory(plan=team)
    url = reverse("admin:kernia_billing_plan_delete", args=[team.pk])
    assert "Are you sure" in staff_client.get(url).content.decode()
    staff_client.post(url, {"post": "yes"})
    assert not Plan.objects.filter(pk=team.pk).exists()


def test_feature_admin_lists_features(staff_client):
    FeatureFactory(key="messages", name="Messages")
    page = staff_client.get(reverse("admin:kernia_billing_feature_changelist")).content.decode()
    assert "messages" in page


def test_a_used_features_key_and_kind_are_read_only(staff_client):
    messages_feature = FeatureFactory(key="messages", kind="metered")
    unused = FeatureFactory(key="sso", kind="boolean")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages_feature, included=100)
    user = UserFactory()
    kernia_billing.track(user, "messages", 3)
    url = reverse("admin:kernia_billing_feature_change", args=[messages_feature.pk])

    page = staff_client.get(url, follow=True).content.decode()
    assert 'name="key"' not in page and 'name="kind"' not in page
    assert "key and kind are read-only" in page

    staff_client.post(
        url, {"key": "msgs", "kind": "boolean", "name": "Messages", "unit": "", "description": ""}
    )
    messages_feature.refresh_from_db()
    assert (messages_feature.key, messages_feature.kind) == ("messages", "metered")
    assert kernia_billing.check(user, "messages").balance == 97

    # The rule lives on the model, so every writer (the catalog loader too) meets it.
    messages_feature.kind = "boolean"
    with pytest.raises(ValidationError) as refused:
        messages_feature.full_clean()
    assert "kind" in refused.value.message_dict

    # A feature nobody uses yet can still be renamed.
    unused_url = reverse("admin:kernia_billing_feature_change", args=[unused.pk])
    assert 'name="key"' in staff_client.get(unused_url).content.decode()
    staff_client.post(
        unused_url, {"key": "saml", "kind": "boolean", "name": "SSO", "unit": "", "description": ""}
    )
    unused.refresh_from_db()
    assert unused.key == "saml"


def test_non_staff_cannot_see_or_act(user_client, fake_stripe):
    price = CatalogPriceFactory(review_state=ReviewState.PENDING)
    plan = PlanFactory(key="pro")
    seed_example_stripe(fake_stripe)
    before = table_snapshot()

    for url in (PRICES, PRODUCTS, reverse("admin:kernia_billing_plan_changelist")):
        response = user_client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    for action in ("approve_selected", "ignore_selected"):
        user_client.post(PRICES, {"action": action, ACTION_CHECKBOX_NAME: [price.pk]})
    user_client.post(
        PRICES,
        {"action": "map_to_plan", ACTION_CHECKBOX_NAME: [price.pk], "post": "yes", "plan": plan.pk},
    )
    response = user_client.post(SYNC)

    assert response.status_code == 302 and "/login/" in response["Location"]
    assert table_snapshot() == before
    assert not [r for r in fake_stripe.requests if r.method == "GET"]


def test_staff_without_permissions_is_refused(client):
    user = UserFactory(is_staff=True)
    client.force_login(user)
    price = CatalogPriceFactory(review_state=ReviewState.PENDING)

    assert client.get(PRICES).status_code == 403
    assert (
        client.post(
            PRICES, {"action": "approve_selected", ACTION_CHECKBOX_NAME: [price.pk]}
        ).status_code
        == 403
    )
    assert client.post(SYNC).status_code == 403
    price.refresh_from_db()
    assert price.review_state == ReviewState.PENDING


def test_admin_only_from_empty_database_to_a_plan_with_monthly_and_annual(
    staff_client, fake_stripe
):
    prices = seed_example_stripe(fake_stripe)
    staff_client.post(SYNC)
    pro_prices = CatalogPrice.objects.filter(
        stripe_id__in=[prices["pro_monthly"], prices["pro_annual"]]
    )
    _action(staff_client, PRICES, "approve_selected", pro_prices)
    response = staff_client.post(
        reverse("admin:kernia_billing_feature_add"),
        {"key": "messages", "name": "Messages", "kind": "metered", "unit": "messages"},
    )
    assert response.status_code == 302

    response = staff_client.post(
        reverse("admin:kernia_billing_plan_add"),
        _plan_form(
            prices=[p.pk for p in pro_prices],
            features=[
                {
                    "feature": Feature.objects.get(key="messages").pk,
                    "included": 10000,
                    "reset_period": "month",
                }
            ],
        ),
    )

    assert response.status_code == 302, response.context["errors"]
    pro = Plan.objects.get(key="pro")
    assert sorted(pro.plan_prices.values_list("price__lookup_key", flat=True)) == [
        "pro_annual",
        "pro_monthly",
    ]
    assert pro.plan_features.get().as_seed_dict()["included"] == 10000
