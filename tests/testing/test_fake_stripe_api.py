"""The fake Stripe API through the real ``stripe`` SDK: CRUD, errors, lists, keys."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import stripe

from kernia_billing.testing import FakeStripe, configure_stripe_sdk
from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY

FIXTURE_KEYS: dict[str, list[str]] = json.loads(
    (Path(__file__).parent / "data" / "stripe_fixture_keys.json").read_text()
)


def assert_fixture_keys(obj: Any, resource: str) -> None:
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    missing = set(FIXTURE_KEYS[resource]) - set(data)
    assert not missing, f"{resource} lacks {sorted(missing)}"


def monthly_price(fake: FakeStripe, amount: int = 1000, **extra: Any) -> stripe.Price:
    product = stripe.Product.create(name="Pro")
    return stripe.Price.create(
        product=product.id,
        unit_amount=amount,
        currency="usd",
        recurring={"interval": "month"},
        **extra,
    )


# ------------------------------------------------------------------ products


def test_product_crud(fake_stripe: FakeStripe) -> None:
    product = stripe.Product.create(
        name="Pro", description="All features", metadata={"tier": "pro"}
    )
    assert product.id.startswith("prod_")
    assert product.livemode is False and product.active is True
    assert product.metadata.to_dict() == {"tier": "pro"}
    assert_fixture_keys(product, "product")

    updated = stripe.Product.modify(product.id, name="Pro+", metadata={"tier": "", "x": "1"})
    assert updated.name == "Pro+"
    assert updated.metadata.to_dict() == {"x": "1"}
    assert stripe.Product.retrieve(product.id).name == "Pro+"

    deleted = stripe.Product.delete(product.id)
    assert deleted.to_dict() == {"id": product.id, "object": "product", "deleted": True}
    assert_fixture_keys(deleted, "deleted_product")
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Product.retrieve(product.id)
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    assert info.value.user_message == f"No such product: '{product.id}'"
    types = [event["type"] for event in fake_stripe.events()]
    assert types == ["product.created", "product.updated", "product.deleted"]


def test_product_list_filters_and_features(fake_stripe: FakeStripe) -> None:
    a = stripe.Product.create(name="A")
    b = stripe.Product.create(name="B", active=False)
    assert [p.id for p in stripe.Product.list()] == [b.id, a.id]  # newest first
    assert [p.id for p in stripe.Product.list(active=True)] == [a.id]
    assert [p.id for p in stripe.Product.list(ids=[b.id])] == [b.id]
    assert stripe.Product.list_features(a.id).data == []
    feature = fake_stripe.add_product_feature(a.id, "Exports")
    features = stripe.Product.list_features(a.id)
    assert [f.id for f in features] == [feature["id"]]
    assert_fixture_keys(features.data[0], "product_feature")


def test_product_with_prices_cannot_be_deleted(fake_stripe: FakeStripe) -> None:
    price = monthly_price(fake_stripe)
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Product.delete(price.product)
    fake_stripe.delete_price(price.id)
    assert fake_stripe.events("price.deleted")[0]["data"]["object"]["id"] == price.id
    assert stripe.Product.delete(price.product).deleted is True


# ------------------------------------------------------------------ prices


def test_price_create_retrieve_update(fake_stripe: FakeStripe) -> None:
    price = monthly_price(fake_stripe, 2500, lookup_key="pro_monthly", nickname="Pro monthly")
    assert price.id.startswith("price_")
    assert price.type == "recurring"
    assert price.recurring.interval == "month" and price.recurring.interval_count == 1
    assert price.unit_amount == 2500 and str(price.unit_amount_decimal) == "2500"
    assert_fixture_keys(price, "price")

    updated = stripe.Price.modify(price.id, active=False, nickname="Old", metadata={"k": "v"})
    assert (updated.active, updated.nickname, updated.metadata.to_dict()) == (
        False,
        "Old",
        {"k": "v"},
    )
    event = fake_stripe.events("price.updated")[-1]
    assert event["data"]["previous_attributes"]["active"] is True
    assert event["data"]["object"]["active"] is False


def test_price_with_product_data_and_one_time(fake_stripe: FakeStripe) -> None:
    price = stripe.Price.create(product_data={"name": "Setup fee"}, unit_amount=500, currency="EUR")
    assert price.type == "one_time" and price.recurring is None and price.currency == "eur"
    assert stripe.Product.retrieve(price.product).name == "Setup fee"


def test_lookup_keys_are_unique_unless_transferred(fake_stripe: FakeStripe) -> None:
    first = monthly_price(fake_stripe, lookup_key="pro")
    with pytest.raises(stripe.InvalidRequestError) as info:
        monthly_price(fake_stripe, lookup_key="pro")
    assert info.value.param == "lookup_key"
    second = monthly_price(fake_stripe, lookup_key="pro", transfer_lookup_key=True)
    assert stripe.Price.retrieve(first.id).lookup_key is None
    assert [p.id for p in stripe.Price.list(lookup_keys=["pro"])] == [second.id]


def test_price_list_filters(fake_stripe: FakeStripe) -> None:
    monthly = monthly_price(fake_stripe)
    yearly = stripe.Price.create(
        product=monthly.product, unit_amount=10000, currency="usd", recurring={"interval": "year"}
    )
    one_time = stripe.Price.create(product=monthly.product, unit_amount=1, currency="gbp")
    assert {p.id for p in stripe.Price.list(type="recurring")} == {monthly.id, yearly.id}
    assert [p.id for p in stripe.Price.list(recurring={"interval": "year"})] == [yearly.id]
    assert [p.id for p in stripe.Price.list(currency="gbp")] == [one_time.id]
    assert len(stripe.Price.list(product=monthly.product).data) == 3
    stripe.Price.modify(one_time.id, active=False)
    assert one_time.id not in {p.id for p in stripe.Price.list(active=True)}


def test_price_errors(fake_stripe: FakeStripe) -> None:
    fake_stripe.allow_contract_violations = True
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe.Price.retrieve("price_nope")
    assert missing.value.http_status == 404
    assert missing.value.user_message == "No such price: 'price_nope'"
    with pytest.raises(stripe.InvalidRequestError) as param_missing:
        stripe.Price.create(unit_amount=100, currency="usd")
    assert (param_missing.value.http_status, param_missing.value.code) == (400, "parameter_missing")
    product = stripe.Product.create(name="X")
    with pytest.raises(stripe.InvalidRequestError) as bad_int:
        stripe.Price.create(product=product.id, unit_amount="ten", currency="usd")
    assert bad_int.value.code == "parameter_invalid_integer"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        stripe.Price.create(product=product.id, unit_amount=1, currency="usd", colour="red")
    assert (unknown.value.code, unknown.value.param) == ("parameter_unknown", "colour")


# ------------------------------------------------------------------ pagination & expand


def test_pagination_and_auto_paging(fake_stripe: FakeStripe) -> None:
    product = fake_stripe.create_product(name="Bulk")
    created = [
        fake_stripe.create_price(product=product["id"], unit_amount=i, currency="usd")["id"]
        for i in range(105)
    ]
    newest_first = list(reversed(created))
    page = stripe.Price.list()
    assert len(page.data) == 10 and page.has_more is True and page.url == "/v1/prices"
    page2 = stripe.Price.list(limit=100, starting_after=newest_first[9])
    assert [p.id for p in page2.data] == newest_first[10:105] and page2.has_more is False
    before = stripe.Price.list(limit=3, ending_before=newest_first[5])
    assert [p.id for p in before.data] == newest_first[2:5] and before.has_more is True
    assert [p.id for p in stripe.Price.list(limit=100).auto_paging_iter()] == newest_first
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Price.list(limit=101)


def test_expand_on_list_and_retrieve(fake_stripe: FakeStripe) -> None:
    price = monthly_price(fake_stripe)
    listed = stripe.Price.list(expand=["data.product"])
    assert listed.data[0].product.name == "Pro"
    assert stripe.Price.retrieve(price.id, expand=["product"]).product.object == "product"
    assert stripe.Price.retrieve(price.id).product == price.product
    # dj-stripe's default expansions include non-id fields; they are ignored.
    assert stripe.Price.retrieve(price.id, expand=["currency_options", "tiers"]).id == price.id


# ------------------------------------------------------------------ customers


def test_customer_crud(fake_stripe: FakeStripe) -> None:
    customer = stripe.Customer.create(email="ada@example.com", name="Ada", metadata={"uid": "1"})
    assert customer.id.startswith("cus_") and customer.email == "ada@example.com"
    assert_fixture_keys(customer, "customer")
    stripe.Customer.create(email="bob@example.com")
    assert [c.id for c in stripe.Customer.list(email="ada@example.com")] == [customer.id]
    assert stripe.Customer.modify(customer.id, name="Ada L.").name == "Ada L."
    deleted = stripe.Customer.delete(customer.id)
    assert deleted.deleted is True
    again = stripe.Customer.retrieve(customer.id)
    assert again.to_dict() == {"id": customer.id, "object": "customer", "deleted": True}
    assert_fixture_keys(again, "deleted_customer")
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Customer.modify(customer.id, name="x")


# ------------------------------------------------------------------ account, v2, auth


def test_account_and_v2_account(fake_stripe: FakeStripe) -> None:
    account = stripe.Account.retrieve()
    assert account.id.startswith("acct_")
    assert_fixture_keys(account, "account")
    client = stripe.StripeClient(FAKE_STRIPE_API_KEY)  # honours configure_stripe_sdk's base
    v2 = client.v2.core.accounts.retrieve(account.id)
    assert v2.id == account.id
    assert fake_stripe.requests[-1].path == f"/v2/core/accounts/{account.id}"


def test_authentication(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError):
        stripe.Product.list(api_key="sk_test_short")
    with pytest.raises(stripe.AuthenticationError):
        stripe.Product.list(api_key="pk_test_" + "a" * 24)
    assert fake_stripe.requests[-1].status == 401
    stripe.Product.list(api_key="rk_live_" + "b" * 30)


def test_explicit_api_keys() -> None:
    key = "sk_test_" + "k" * 24
    with FakeStripe(api_keys=[key]) as fake, configure_stripe_sdk(fake.url, api_key=key):
        stripe.Product.list()
        with pytest.raises(stripe.AuthenticationError):
            stripe.Product.list(api_key="sk_test_" + "z" * 24)


def test_unknown_url_is_404(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Product._static_request("get", "/v1/nothing_here")
    assert info.value.http_status == 404


# ------------------------------------------------------------------ webhook endpoints & events


def test_webhook_endpoint_crud(fake_stripe: FakeStripe) -> None:
    endpoint = stripe.WebhookEndpoint.create(
        url="http://127.0.0.1:9/hook", enabled_events=["product.created"], description="d"
    )
    assert endpoint.id.startswith("we_") and endpoint.secret.startswith("whsec_")
    assert_fixture_keys(endpoint, "webhook_endpoint")
    fetched = stripe.WebhookEndpoint.retrieve(endpoint.id)
    assert "secret" not in fetched
    assert stripe.WebhookEndpoint.modify(endpoint.id, disabled=True).status == "disabled"
    assert [e.id for e in stripe.WebhookEndpoint.list()] == [endpoint.id]
    deleted = stripe.WebhookEndpoint.delete(endpoint.id)
    assert deleted.deleted is True
    assert_fixture_keys(deleted, "deleted_webhook_endpoint")


def test_events_list_and_retrieve(fake_stripe: FakeStripe) -> None:
    fake_stripe.set_clock(1_700_000_000)
    stripe.Product.create(name="A", stripe_version="2025-01-01.test")
    fake_stripe.advance_clock(100)
    customer = stripe.Customer.create(email="x@example.com", idempotency_key="ik-1")
    events = stripe.Event.list()
    assert [e.type for e in events] == ["customer.created", "product.created"]
    assert_fixture_keys(events.data[0], "event")
    first = stripe.Event.retrieve(events.data[1].id)
    # Events are in the account's API version, not the triggering request's.
    assert first.api_version == "2026-05-27.dahlia"
    assert events.data[0].api_version == "2026-05-27.dahlia"
    assert events.data[0]["request"]["idempotency_key"] == "ik-1"
    assert events.data[0]["request"]["id"].startswith("req_")
    assert events.data[0].data.object.id == customer.id
    assert [e.type for e in stripe.Event.list(type="customer.*")] == ["customer.created"]
    assert [e.type for e in stripe.Event.list(types=["product.created"])] == ["product.created"]
    assert [e.type for e in stripe.Event.list(created={"gt": 1_700_000_050})] == [
        "customer.created"
    ]


# ------------------------------------------------------------------ idempotency, faults, log


def test_idempotency_key_replays_first_response(fake_stripe: FakeStripe) -> None:
    first = stripe.Customer.create(email="a@example.com", idempotency_key="same")
    second = stripe.Customer.create(email="a@example.com", idempotency_key="same")
    assert first.id == second.id
    assert len(stripe.Customer.list().data) == 1
    with pytest.raises(stripe.IdempotencyError):
        stripe.Customer.create(email="other@example.com", idempotency_key="same")


def test_concurrent_duplicate_creates_make_one_object(fake_stripe: FakeStripe) -> None:
    ids: list[str] = []

    def create() -> None:
        ids.append(stripe.Product.create(name="Race", idempotency_key="race-1").id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert len(stripe.Product.list().data) == 1


def test_concurrent_requests(fake_stripe: FakeStripe) -> None:
    def create(n: int) -> None:
        stripe.Customer.create(email=f"c{n}@example.com")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(stripe.Customer.list(limit=100).auto_paging_iter())) == 20


def test_fault_injection(fake_stripe: FakeStripe) -> None:
    fake_stripe.inject_fault("/v1/prices", status=500, times=2)
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            stripe.Price.list()
    stripe.Price.list()
    stripe.Product.list()  # other paths never matched

    fake_stripe.inject_fault("/v1/products", method="POST", status=429)
    stripe.Product.list()
    with pytest.raises(stripe.RateLimitError):
        stripe.Product.create(name="x")

    fake_stripe.inject_fault("/v1/customers", delay=0.5, status=None)
    client = stripe.StripeClient(
        FAKE_STRIPE_API_KEY, http_client=stripe.RequestsClient(timeout=0.1), max_network_retries=0
    )
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()
    assert time.monotonic() - started < 0.5

    fake_stripe.inject_fault("/v1/customers", status=503, times=5)
    fake_stripe.clear_faults()
    stripe.Customer.list()


def test_request_log(fake_stripe: FakeStripe) -> None:
    product = stripe.Product.create(name="Logged", metadata={"a": "b"}, idempotency_key="k1")
    stripe.Price.list(product=product.id, limit=5)
    create, listing = fake_stripe.requests
    assert (create.method, create.path, create.status) == ("POST", "/v1/products", 200)
    assert create.body == {"name": "Logged", "metadata": {"a": "b"}}
    assert create.idempotency_key == "k1"
    assert create.api_key == FAKE_STRIPE_API_KEY
    assert create.stripe_version == "2026-05-27.dahlia"
    assert listing.query == {"product": product.id, "limit": "5"}
    assert listing.params["limit"] == "5"
    fake_stripe.reset()
    assert fake_stripe.requests == []
