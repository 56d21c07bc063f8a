"""Billing customers, usage events and webhook health in the admin, through the test client."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from kernia_billing.models import BillingCustomer, Entitlement, UsageEvent
from kernia_billing.services import usage as entitlements
from kernia_billing.services.customers import get_or_create_customer
from tests.factories import (
    FeatureFactory,
    OrganizationFactory,
    PlanFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

CUSTOMERS = reverse("admin:kernia_billing_billingcustomer_changelist")
EVENTS = reverse("admin:kernia_billing_usageevent_changelist")
HEALTH = reverse("admin:kernia_billing_webhookdelivery_changelist")


def customer_url(customer: BillingCustomer, action: str = "change") -> str:
    return reverse(f"admin:kernia_billing_billingcustomer_{action}", args=[customer.pk])


@pytest.fixture
def free_plan():
    plan = PlanFactory(key="free", name="Free", is_default=True)
    PlanFeatureFactory(
        plan=plan, feature=FeatureFactory(key="messages", name="Messages"), included=100
    )
    return plan


@pytest.fixture
def admin_client(client):
    client.force_login(StaffFactory())
    return client


def make_customers(count: int) -> list[BillingCustomer]:
    """Users and organizations, each with a usage event."""
    customers = []
    for n in range(count):
        owner = UserFactory() if n % 2 else OrganizationFactory()
        customer = get_or_create_customer(owner)
        BillingCustomer.objects.filter(pk=customer.pk).update(
            stripe_customer_id=f"cus_admin{customer.pk}", subscription_status="active"
        )
        entitlements.track(owner, "messages", 1)
        customers.append(customer)
    return customers


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_customer_list_shows_owner_plan_and_stripe_ids(admin_client, free_plan):
    user = UserFactory(username="ada")
    customer = get_or_create_customer(user)
    BillingCustomer.objects.filter(pk=customer.pk).update(
        stripe_customer_id="cus_ada", subscription_status="active", cancel_at_period_end=True
    )

    response = admin_client.get(CUSTOMERS)

    assert response.status_code == 200
    page = response.content.decode()
    assert "ada &lt;ada@example.com&gt;" in page and "cus_ada" in page and "Free" in page
    assert HEALTH in page
    assert admin_client.get(CUSTOMERS, {"q": "cus_ada"}).context["cl"].result_count == 1
    assert admin_client.get(CUSTOMERS, {"q": "cus_nobody"}).context["cl"].result_count == 0
    assert admin_client.get(CUSTOMERS, {"q": str(user.pk)}).context["cl"].result_count == 1
    filtered = admin_client.get(CUSTOMERS, {"plan__id__exact": free_plan.pk})
    assert filtered.context["cl"].result_count == 1
    by_status = admin_client.get(CUSTOMERS, {"subscription_status": "canceled"})
    assert by_status.context["cl"].result_count == 0


def test_customers_and_usage_events_show_and_find_owners_by_name_and_email(admin_client, free_plan):
    ada = UserFactory(username="ada", first_name="Ada", last_name="Lovelace")
    org = OrganizationFactory(name="Analytical Engines")
    for owner in (ada, org, UserFactory(username="bob")):
        entitlements.track(owner, "messages", 1)
    ada_customer = get_or_create_customer(ada)

    page = admin_client.get(customer_url(ada_customer)).content.decode()
    assert "Ada Lovelace &lt;ada@example.com&gt;" in page
    assert "user:" not in page
    listing = admin_client.get(CUSTOMERS).content.decode()
    assert "Analytical Engines (organization)" in listing

    for url in (CUSTOMERS, EVENTS):
        for term, expected in (("lovelace", 1), ("ada@exa", 1), ("analytical", 1), ("zed", 0)):
            found = admin_client.get(url, {"q": term})
            assert found.context["cl"].result_count == expected, (url, term)
    events = admin_client.get(EVENTS).content.decode()
    assert "Ada Lovelace &lt;ada@example.com&gt;" in events


def test_customer_list_queries_do_not_grow_with_rows(admin_client, free_plan):
    make_customers(2)
    few = queries(admin_client, CUSTOMERS)
    make_customers(10)
    assert queries(admin_client, CUSTOMERS) == few


def test_customer_page_shows_entitlements_and_recent_usage(admin_client, free_plan):
    user = UserFactory()
    for n in range(3):
        entitlements.track(user, "messages", 2, idempotency_key=f"send-{n}")
    customer = BillingCustomer.objects.get()

    response = admin_client.get(customer_url(customer))

    assert response.status_code == 200
    page = response.content.decode()
    [row] = response.context["inline_admin_formsets"][0].formset.queryset
    assert (row.feature.key, row.included, row.usage, row.balance) == ("messages", 100, 6, 94)
    assert page.count("send-") == 3 and "+2" in page
    assert f"{EVENTS}?customer__id__exact={customer.pk}" in page
    assert 'name="_save"' not in page  # view only


def test_customer_page_lists_at_most_50_events_in_bounded_queries(admin_client, free_plan):
    user = UserFactory()
    entitlements.track(user, "messages", 1, idempotency_key="first")
    customer = BillingCustomer.objects.get()
    few = queries(admin_client, customer_url(customer))
    for n in range(60):
        entitlements.track(user, "messages", 1, idempotency_key=f"k-{n:02d}")

    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(customer_url(customer)).content.decode()

    assert len(captured) == few
    assert "k-59" in page and "k-10" in page and "k-09" not in page and "first" not in page


def test_customers_cannot_be_added_changed_or_deleted(admin_client, free_plan):
    [customer] = make_customers(1)
    before = BillingCustomer.objects.values().get()

    assert admin_client.get(reverse("admin:kernia_billing_billingcustomer_add")).status_code == 403
    changed = admin_client.post(
        customer_url(customer), {"subscription_status": "canceled", "stripe_customer_id": "x"}
    )
    assert changed.status_code == 403
    assert admin_client.post(customer_url(customer, "delete"), {"post": "yes"}).status_code == 403
    listing = admin_client.get(CUSTOMERS)
    assert "delete_selected" not in listing.content.decode()
    assert BillingCustomer.objects.values().get() == before
    assert Entitlement.objects.count() == 1 and UsageEvent.objects.count() == 1


def test_usage_events_are_filterable_by_feature_and_date_and_read_only(admin_client, free_plan):
    make_customers(3)
    other = FeatureFactory(key="exports", name="Exports")
    feature = FeatureFactory(key="messages")

    response = admin_client.get(EVENTS)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 3
    assert (
        admin_client.get(EVENTS, {"feature__id__exact": other.pk}).context["cl"].result_count == 0
    )
    assert (
        admin_client.get(EVENTS, {"feature__id__exact": feature.pk}).context["cl"].result_count == 3
    )
    today = timezone.localdate()
    by_day = admin_client.get(
        EVENTS,
        {
            "created_at__year": today.year,
            "created_at__month": today.month,
            "created_at__day": today.day,
        },
    )
    assert by_day.context["cl"].result_count == 3
    one = BillingCustomer.objects.order_by("pk").first()
    mine = admin_client.get(EVENTS, {"customer__id__exact": one.pk})
    assert mine.context["cl"].result_count == 1

    event = UsageEvent.objects.first()
    url = reverse("admin:kernia_billing_usageevent_change", args=[event.pk])
    assert admin_client.get(url).status_code == 200
    assert admin_client.post(url, {"amount": 999}).status_code == 403
    assert admin_client.get(reverse("admin:kernia_billing_usageevent_add")).status_code == 403
    assert UsageEvent.objects.get(pk=event.pk).amount == 1


def test_usage_event_list_queries_do_not_grow_with_rows(admin_client, free_plan):
    make_customers(2)
    few = queries(admin_client, EVENTS)
    make_customers(10)
    assert queries(admin_client, EVENTS) == few


def _trigger(event_type: str, **fields) -> WebhookEventTrigger:
    return WebhookEventTrigger.objects.create(
        remote_ip="127.0.0.1", headers={}, body=json.dumps({"type": event_type}), **fields
    )


def test_webhook_health_page_renders_the_health_selector(admin_client):
    _trigger("invoice.paid", valid=True, processed=True)
    _trigger("invoice.paid", valid=True, processed=True)
    _trigger("customer.subscription.updated", valid=True, exception="Injected fault 503")
    _trigger("customer.subscription.updated", valid=False)
    old = _trigger("invoice.paid", valid=True, processed=True)
    WebhookEventTrigger.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=2))

    response = admin_client.get(HEALTH)

    assert response.status_code == 200
    health = response.context["health"]
    assert (health.processed, health.failed, health.invalid_signature) == (2, 1, 1)
    assert health.failures == 2
    page = response.content.decode()
    assert "invoice.paid</td><td>2<" in page
    assert "customer.subscription.updated</td><td>2<" in page
    assert "Injected fault 503" in page
    # Every delivery is listed with its outcome (the old one too: the list is not windowed).
    assert response.context["cl"].result_count == 5
    assert page.count("Refused: invalid signature") >= 2  # the row and the filter
    assert "Signature did not verify" in page


def test_a_refused_delivery_is_the_last_failure(admin_client):
    _trigger("invoice.paid", valid=True, exception="Injected fault 503")
    _trigger("customer.subscription.updated", valid=False)

    health = admin_client.get(HEALTH).context["health"]

    assert health.failures == 2
    assert health.last_failure.type == "customer.subscription.updated"
    assert "Invalid signature" in health.last_failure.message


def test_billing_section_on_the_admin_index_links_webhook_deliveries(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Webhook deliveries and health" in page
    assert HEALTH in page


def test_the_billing_section_is_named_clearly_and_comes_before_dj_stripe(admin_client):
    apps = admin_client.get(reverse("admin:index")).context["app_list"]
    names = [app["name"] for app in apps]
    ours = names.index("Billing — plans, features, customers (kernia)")
    assert ours < names.index("Djstripe")
    models = {m["object_name"] for m in apps[ours]["models"]}
    assert {"Plan", "Feature", "BillingCustomer", "CatalogPrice", "WebhookDelivery"} <= models


def test_webhook_health_page_without_deliveries(admin_client):
    response = admin_client.get(HEALTH)
    assert response.status_code == 200
    assert "None yet" in response.content.decode()
    assert "No deliveries in the last 24 hours." in response.content.decode()


@pytest.mark.parametrize("url", [CUSTOMERS, EVENTS, HEALTH])
def test_non_staff_are_refused(client, url):
    assert client.get(url).status_code == 302  # to the admin login
    client.force_login(UserFactory())
    response = client.get(url)
    assert response.status_code == 302 and "/login/" in response["Location"]
    client.force_login(UserFactory(is_staff=True))  # staff without the view permission
    assert client.get(url).status_code == 403
