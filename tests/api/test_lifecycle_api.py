"""billing/customer, billing/checkout (+ return), billing/portal against the fake Stripe."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import stripe
from django.db import connection
from django.test import Client

from kernia_billing.models import BillingCustomer, CatalogPrice
from kernia_billing.services.checkout import ensure_stripe_customer
from kernia_billing.testing import FakeStripe
from tests.factories import UserFactory
from tests.lifecycle import Catalog, plans, webhooks

__all__ = ["plans", "webhooks"]

CUSTOMER_URL = "/api/auth/billing/customer"
CHECKOUT_URL = "/api/auth/billing/checkout"
RETURN_URL = "/api/auth/billing/checkout/return"
PORTAL_URL = "/api/auth/billing/portal"


@pytest.fixture
def signed_in(client: Client, db: None) -> Client:
    client.force_login(UserFactory())
    return client


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def stripe_customers(fake: FakeStripe) -> list[dict[str, Any]]:
    return fake.store.list_objects("customer")


@pytest.mark.django_db
def test_customer_before_any_subscription(signed_in: Client, plans: Catalog) -> None:
    response = signed_in.get(CUSTOMER_URL)
    assert response.status_code == 200
    body = response.json()
    assert body["stripeCustomerId"] is None
    assert body["subscription"] is None
    assert body["plan"] == {"key": "free", "name": "Free"}
    assert body["portalAvailable"] is False
    [messages] = body["entitlements"]
    assert (messages["feature"], messages["included"], messages["balance"]) == (
        "messages",
        100,
        100,
    )


def test_customer_requires_sign_in(client: Client, db: None) -> None:
    assert client.get(CUSTOMER_URL).status_code in (401, 403)
    assert client.get(CUSTOMER_URL).json()["error"]["code"] in (
        "not_authenticated",
        "permission_denied",
    )


@pytest.mark.django_db
def test_checkout_creates_the_customer_then_a_session(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    response = post(signed_in, CHECKOUT_URL, {"plan": "pro", "interval": "year"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["url"].startswith(fake_stripe.url)
    session = stripe.checkout.Session.retrieve(body["sessionId"])
    assert session.mode == "subscription"
    assert [li.price.id for li in stripe.checkout.Session.list_line_items(session.id)] == [
        plans.pro_yearly
    ]
    assert "/api/auth/billing/checkout/return?" in session.success_url
    assert "session_id={CHECKOUT_SESSION_ID}" in session.success_url
    [customer] = stripe_customers(fake_stripe)
    assert customer["metadata"]["kernia_owner_type"] == "auth.user"
    assert session.customer == customer["id"]
    # A second checkout reuses the Stripe customer.
    assert post(signed_in, CHECKOUT_URL, {"price": plans.pro_monthly}).status_code == 200
    assert len(stripe_customers(fake_stripe)) == 1


@pytest.mark.django_db
def test_return_applies_before_the_webhook_and_the_webhook_changes_nothing(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Any
) -> None:
    session_id = post(signed_in, CHECKOUT_URL, {"plan": "pro"}).json()["sessionId"]
    fake_stripe.complete_checkout_session(session_id)
    response = signed_in.get(RETURN_URL, {"session_id": session_id})
    assert response.status_code == 200
    assert response.json()["plan"] == "pro" and response.json()["status"] == "complete"
    customer = BillingCustomer.objects.get()
    stamp = customer.updated_at
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.plan == plans.pro
    assert customer.stripe_state_at is not None
    assert signed_in.get(CUSTOMER_URL).json()["subscription"]["status"] == "active"
    assert customer.updated_at >= stamp


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"plan": "pro", "successUrl": "https://evil.example.com/x"}, 400, "invalid_request"),
        ({"plan": "pro", "cancelUrl": "javascript:alert(1)"}, 400, "invalid_request"),
        ({"plan": "nope"}, 404, "unknown_plan"),
        ({"plan": "free"}, 400, "invalid_request"),
        ({"plan": "pro", "interval": "week"}, 400, "invalid_request"),
        ({"price": "price_unknown"}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"plan": "pro", "price": "price_x"}, 400, "invalid_request"),
        ({"plan": 7}, 400, "invalid_request"),
        ({"plan": "pro", "quantity": 3}, 400, "invalid_request"),
    ],
)
def test_checkout_bad_input(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, body: Any, status: int, code: str
) -> None:
    response = post(signed_in, CHECKOUT_URL, body)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert stripe_customers(fake_stripe) == []


@pytest.mark.django_db
def test_checkout_refuses_an_unapproved_price(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    CatalogPrice.objects.filter(stripe_id=plans.pro_monthly).update(review_state="pending")
    response = post(signed_in, CHECKOUT_URL, {"price": plans.pro_monthly})
    assert response.status_code == 400


@pytest.mark.django_db
def test_redirect_hosts_setting_allows_another_host(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, settings: Any
) -> None:
    settings.KERNIA_BILLING = {
        **settings.KERNIA_BILLING,
        "REDIRECT_ALLOWED_HOSTS": ["app.example.com"],
    }
    response = post(
        signed_in, CHECKOUT_URL, {"plan": "pro", "successUrl": "https://app.example.com/ok"}
    )
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("failing", ["/v1/customers", "/v1/checkout/sessions"])
def test_stripe_errors_are_502_and_leave_nothing_half_written(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, failing: str
) -> None:
    fake_stripe.inject_fault(failing, method="POST", status=500)
    response = post(signed_in, CHECKOUT_URL, {"plan": "pro"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "stripe_error"
    customer = BillingCustomer.objects.get()
    if failing == "/v1/customers":
        assert customer.stripe_customer_id is None and stripe_customers(fake_stripe) == []
    else:
        # The Stripe customer exists and is linked; the retry reuses it.
        assert customer.stripe_customer_id == stripe_customers(fake_stripe)[0]["id"]
    assert post(signed_in, CHECKOUT_URL, {"plan": "pro"}).status_code == 200
    assert len(stripe_customers(fake_stripe)) == 1


@pytest.mark.django_db
def test_customer_creation_is_idempotent_across_a_lost_answer(
    fake_stripe: FakeStripe, plans: Catalog
) -> None:
    """Stripe created the customer but the answer was lost: the retry gets the same one."""
    user = UserFactory()
    customer = ensure_stripe_customer(user)
    first = customer.stripe_customer_id
    BillingCustomer.objects.filter(pk=customer.pk).update(stripe_customer_id=None)
    assert ensure_stripe_customer(user).stripe_customer_id == first
    assert len(stripe_customers(fake_stripe)) == 1
    keys = {r.idempotency_key for r in fake_stripe.requests if r.path == "/v1/customers"}
    assert keys == {f"kernia-billing-customer-{customer.pk}-0"}


@pytest.mark.django_db
def test_portal(signed_in: Client, fake_stripe: FakeStripe, plans: Catalog) -> None:
    response = post(signed_in, PORTAL_URL, {"returnUrl": "http://testserver/account"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_stripe_customer"
    post(signed_in, CHECKOUT_URL, {"plan": "pro"})
    response = post(signed_in, PORTAL_URL, {"returnUrl": "http://testserver/account"})
    assert response.status_code == 200
    assert response.json()["url"].startswith(f"{fake_stripe.url}/portal/")
    assert post(signed_in, PORTAL_URL, {"returnUrl": "https://evil.example/"}).status_code == 400
    fake_stripe.inject_fault("/v1/billing_portal", status=503)
    assert post(signed_in, PORTAL_URL, {}).status_code == 502


@pytest.mark.django_db
def test_return_validates_input(signed_in: Client, fake_stripe: FakeStripe, plans: Catalog) -> None:
    assert signed_in.get(RETURN_URL).status_code == 400
    assert signed_in.get(RETURN_URL, {"session_id": "cs_test_missing"}).status_code == 400
    session_id = post(signed_in, CHECKOUT_URL, {"plan": "pro"}).json()["sessionId"]
    response = signed_in.get(
        RETURN_URL, {"session_id": session_id, "next": "https://evil.example/"}
    )
    assert response.status_code == 400
    # Not paid yet: nothing applied.
    response = signed_in.get(RETURN_URL, {"session_id": session_id})
    assert response.status_code == 200 and response.json()["status"] == "open"
    assert response.json()["plan"] == "free"


@pytest.mark.django_db
def test_non_json_and_wrong_types_are_4xx(signed_in: Client, plans: Catalog) -> None:
    assert signed_in.post(CHECKOUT_URL, "plan=pro", content_type="text/plain").status_code == 415
    assert signed_in.post(CHECKOUT_URL, "{", content_type="application/json").status_code == 400
    assert post(signed_in, CHECKOUT_URL, {"plan": "pro", "successUrl": 5}).status_code == 400
    assert post(signed_in, PORTAL_URL, {"returnUrl": "x" * 5000}).status_code == 400


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_checkouts_create_one_stripe_customer(
    fake_stripe: FakeStripe, plans: Catalog
) -> None:
    user = UserFactory()
    fake_stripe.inject_fault("/v1/customers", method="POST", status=None, delay=0.2, times=10)
    barrier = threading.Barrier(6)
    results: list[int] = []

    def attempt() -> None:
        client = Client()
        client.force_login(user)
        barrier.wait()
        try:
            results.append(post(client, CHECKOUT_URL, {"plan": "pro"}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 6
    assert len(stripe_customers(fake_stripe)) == 1
    assert (
        BillingCustomer.objects.get().stripe_customer_id == stripe_customers(fake_stripe)[0]["id"]
    )


# --- redirects (review item 1) -----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        # urlsplit() sees host "testserver"; browsers treat "\" as "/" and go to evil.example.
        "https://evil.example\\@testserver/",
        "http://evil.example\\@testserver/account",
        "https://user@testserver/",
        "https:///evil.example/",
        "//evil.example/",
    ],
)
def test_redirects_to_a_disguised_host_are_refused(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, url: str
) -> None:
    for endpoint, field in ((CHECKOUT_URL, "successUrl"), (CHECKOUT_URL, "cancelUrl")):
        response = post(signed_in, endpoint, {"plan": "pro", field: url})
        assert response.status_code == 400, (field, response.content)
        assert response.json()["error"]["code"] == "invalid_request"
    assert stripe_customers(fake_stripe) == []
    session_id = post(signed_in, CHECKOUT_URL, {"plan": "pro"}).json()["sessionId"]
    assert post(signed_in, PORTAL_URL, {"returnUrl": url}).status_code == 400
    response = signed_in.get(RETURN_URL, {"session_id": session_id, "next": url})
    assert response.status_code == 400
    assert not response.has_header("Location")


@pytest.mark.django_db
def test_wildcard_allowed_hosts_does_not_allow_any_redirect(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    response = post(signed_in, CHECKOUT_URL, {"plan": "pro", "successUrl": "https://evil.example/"})
    assert response.status_code == 400
    assert post(signed_in, PORTAL_URL, {"returnUrl": "https://evil.example/"}).status_code == 400
    # With "*", only KERNIA_BILLING["REDIRECT_ALLOWED_HOSTS"] names the hosts to go back to.
    settings.KERNIA_BILLING = {
        **settings.KERNIA_BILLING,
        "REDIRECT_ALLOWED_HOSTS": ["app.example.com"],
    }
    response = post(
        signed_in, CHECKOUT_URL, {"plan": "pro", "successUrl": "https://app.example.com/ok"}
    )
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_redirects_to_own_host_with_a_port_stay_allowed(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    response = post(
        signed_in,
        CHECKOUT_URL,
        {
            "plan": "pro",
            "successUrl": "http://testserver:8000/ok",
            "cancelUrl": "https://testserver/",
        },
    )
    assert response.status_code == 200, response.content


# --- live mode (review item 2) -----------------------------------------------------------

LIVE_KEY = "sk_live_" + "L" * 24


@pytest.mark.django_db
def test_live_mode_project_calls_stripe_with_the_live_key(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, settings: Any
) -> None:
    settings.STRIPE_LIVE_MODE = True
    settings.STRIPE_LIVE_SECRET_KEY = LIVE_KEY
    assert post(signed_in, CHECKOUT_URL, {"plan": "pro"}).status_code == 200
    assert post(signed_in, PORTAL_URL, {}).status_code == 200
    used = {(r.method, r.path.split("/")[2]): r.api_key for r in fake_stripe.requests}
    assert used[("POST", "customers")] == LIVE_KEY
    assert used[("POST", "checkout")] == LIVE_KEY
    assert used[("POST", "billing_portal")] == LIVE_KEY
    assert BillingCustomer.objects.get().livemode is True


# --- one subscription per customer (review item 3) ---------------------------------------


def _pay(client: Client, fake: FakeStripe, plan: str) -> str:
    session_id = post(client, CHECKOUT_URL, {"plan": plan}).json()["sessionId"]
    fake.complete_checkout_session(session_id)
    return session_id


@pytest.mark.django_db
def test_checkout_refuses_a_second_subscription(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    session_id = _pay(signed_in, fake_stripe, "pro")
    assert signed_in.get(RETURN_URL, {"session_id": session_id}).json()["plan"] == "pro"
    sessions_before = len(fake_stripe.store.list_objects("checkout.session"))

    response = post(signed_in, CHECKOUT_URL, {"plan": "business"})

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "already_subscribed"
    assert "billing portal" in error["message"]
    assert len(fake_stripe.store.list_objects("checkout.session")) == sessions_before
    assert len(stripe.Subscription.list(status="all").data) == 1


@pytest.mark.django_db
def test_checkout_asks_stripe_even_before_the_return_or_webhook_arrived(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    _pay(signed_in, fake_stripe, "pro")  # paid, but our rows still say Free
    assert BillingCustomer.objects.get().plan == plans.free
    response = post(signed_in, CHECKOUT_URL, {"plan": "pro"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_subscribed"


@pytest.mark.django_db
def test_checkout_is_open_again_after_the_subscription_ended(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    session_id = _pay(signed_in, fake_stripe, "pro")
    signed_in.get(RETURN_URL, {"session_id": session_id})
    stripe.Subscription.cancel(BillingCustomer.objects.get().stripe_subscription_id)
    assert post(signed_in, CHECKOUT_URL, {"plan": "business"}).status_code == 200


# --- complete_checkout with an explicit API key (review item 7) --------------------------


@pytest.mark.django_db
def test_complete_checkout_uses_the_api_key_it_is_given(
    fake_stripe: FakeStripe, plans: Catalog
) -> None:
    from kernia_billing.services.checkout import complete_checkout, start_checkout

    key = "sk_test_" + "K" * 24
    user = UserFactory()
    started = start_checkout(
        user,
        plan="pro",
        success_url="http://testserver/ok",
        cancel_url="http://testserver/",
        api_key=key,
    )
    fake_stripe.complete_checkout_session(started.session_id)
    seen = len(fake_stripe.requests)

    result = complete_checkout(started.session_id, owner=user, api_key=key)

    assert result.plan == "pro"
    calls = fake_stripe.requests[seen:]
    assert {r.path.split("/")[2] for r in calls} >= {"checkout", "subscriptions"}
    assert {r.api_key for r in calls} == {key}


# --- the pricing table offers what checkout sells (review item 5) ------------------------


@pytest.mark.django_db
def test_pricing_table_offers_exactly_the_prices_checkout_sells(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    from tests.factories import CatalogPriceFactory, PlanPriceFactory

    # Stripe changed the yearly price since review: back in the queue, not for sale.
    CatalogPrice.objects.filter(stripe_id=plans.pro_yearly).update(review_state="pending")
    one_off = CatalogPriceFactory(price_type="one_time", recurring_interval="")
    PlanPriceFactory(plan=plans.business, price=one_off)

    table = signed_in.get("/api/auth/billing/plans").json()["plans"]
    offered = {price["id"] for plan in table for price in plan["prices"]}

    assert offered == {plans.pro_monthly, plans.business_monthly, plans.team_monthly}
    for price in offered:
        response = post(signed_in, CHECKOUT_URL, {"price": price})
        assert response.status_code == 200, (price, response.content)
    for refused in (plans.pro_yearly, one_off.stripe_id):
        assert post(signed_in, CHECKOUT_URL, {"price": refused}).status_code == 400


# --- one set of Stripe error messages (review item 8) ------------------------------------


@pytest.mark.django_db
def test_checkout_with_a_rejected_api_key_says_so(
    signed_in: Client, fake_stripe: FakeStripe, plans: Catalog, settings: Any
) -> None:
    settings.STRIPE_TEST_SECRET_KEY = "not-a-stripe-key"
    response = post(signed_in, CHECKOUT_URL, {"plan": "pro"})
    assert response.status_code == 502
    assert response.json()["error"]["message"].startswith("Stripe rejected the API key")
