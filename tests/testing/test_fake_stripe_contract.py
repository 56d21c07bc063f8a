"""The fake refuses, as Stripe does, any parameter outside Stripe's request contract."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import stripe

from kernia_billing.testing import FakeStripe
from kernia_billing.testing.fake_stripe.contract import known_params
from kernia_billing.testing.fake_stripe.contract.build import SCHEMA_PATH, build_contract
from kernia_billing.testing.fake_stripe.server import routes
from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY, check_contract_violations


@pytest.fixture(autouse=True)
def refusals_expected(fake_stripe: FakeStripe) -> None:
    """These tests send requests Stripe refuses on purpose."""
    fake_stripe.allow_contract_violations = True


def refused(call: Any, *args: Any, **kwargs: Any) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as info:
        call(*args, **kwargs)
    assert info.value.http_status == 400
    return info.value


def recurring_price() -> stripe.Price:
    product = stripe.Product.create(name="Pro")
    return stripe.Price.create(
        product=product.id, unit_amount=1000, currency="usd", recurring={"interval": "month"}
    )


def test_unknown_nested_checkout_parameters_name_their_full_path(fake_stripe: FakeStripe) -> None:
    price = recurring_price()
    base: dict[str, Any] = {"mode": "subscription", "success_url": "https://example.com/ok"}

    error = refused(
        stripe.checkout.Session.create,
        line_items=[{"price": price.id, "quantity": 1, "bogus": "x"}],
        **base,
    )
    assert error.param == "line_items[0][bogus]"
    assert error.code == "parameter_unknown"
    assert "Received unknown parameter: line_items[0][bogus]" in str(error.user_message)

    error = refused(
        stripe.checkout.Session.create,
        line_items=[{"price": price.id, "quantity": 1}],
        subscription_data={"bogus": "x"},
        **base,
    )
    assert error.param == "subscription_data[bogus]"
    assert stripe.checkout.Session.list().data == []


def test_unknown_subscription_item_parameter(fake_stripe: FakeStripe) -> None:
    price = recurring_price()
    customer = stripe.Customer.create(email="a@example.com")
    error = refused(
        stripe.Subscription.create, customer=customer.id, items=[{"price": price.id, "bogus": 1}]
    )
    assert error.param == "items[0][bogus]"


def test_unknown_query_parameter_on_a_list(fake_stripe: FakeStripe) -> None:
    error = refused(stripe.Price.list, bogus=1)
    assert error.param == "bogus"
    assert refused(stripe.Price.list, recurring={"interval": "fortnight"}).param == (
        "recurring[interval]"
    )


@pytest.mark.parametrize(
    ("call", "params", "param"),
    [
        ("customer", {"coupon": "SAVE"}, "coupon"),
        ("customer", {"promotion_code": "promo_1"}, "promotion_code"),
        ("customer", {"default_source": "src_1"}, "default_source"),
        ("subscription", {"coupon": "SAVE"}, "coupon"),
        ("subscription", {"promotion_code": "promo_1"}, "promotion_code"),
        ("webhook", {"disabled": True}, "disabled"),
    ],
)
def test_parameters_the_current_api_no_longer_has(
    fake_stripe: FakeStripe, call: str, params: dict[str, Any], param: str
) -> None:
    if call == "customer":
        error = refused(stripe.Customer.create, email="a@example.com", **params)
    elif call == "subscription":
        customer = stripe.Customer.create(email="a@example.com")
        price = recurring_price()
        error = refused(
            stripe.Subscription.create, customer=customer.id, items=[{"price": price.id}], **params
        )
    else:
        error = refused(
            stripe.WebhookEndpoint.create,
            url="https://example.com/hook",
            enabled_events=["*"],
            **params,
        )
    assert error.param == param and error.code == "parameter_unknown"


def test_types_enums_and_required_parameters(fake_stripe: FakeStripe) -> None:
    product = stripe.Product.create(name="Pro")
    error = refused(stripe.Price.create, product=product.id, currency="usd", unit_amount="ten")
    assert (error.param, error.code) == ("unit_amount", "parameter_invalid_integer")
    error = refused(
        stripe.Price.create,
        product=product.id,
        currency="usd",
        unit_amount=1,
        recurring={"interval": "fortnight"},
    )
    assert error.param == "recurring[interval]"
    assert "must be one of day, month, week or year" in str(error.user_message)
    error = refused(stripe.Price.create, product=product.id, unit_amount=1)
    assert (error.param, error.code) == ("currency", "parameter_missing")
    error = refused(stripe.Product.modify, product.id, active="maybe")
    assert (error.param, error.code) == ("active", "parameter_invalid_boolean")


def test_refused_requests_are_in_the_request_log(fake_stripe: FakeStripe) -> None:
    stripe.Customer.create(email="a@example.com")
    refused(stripe.Customer.create, email="a@example.com", coupon="SAVE")
    violations = fake_stripe.contract_violations()
    assert [(r.path, r.contract_violation) for r in violations] == [("/v1/customers", "coupon")]


def test_the_fixture_fails_a_test_that_sent_refused_requests(fake_stripe: FakeStripe) -> None:
    with contextlib.suppress(stripe.InvalidRequestError):  # code that swallows the 400
        stripe.Customer.create(email="a@example.com", coupon="SAVE")
    fake_stripe.allow_contract_violations = False
    with pytest.raises(pytest.fail.Exception, match=r"POST /v1/customers \(coupon\)"):
        check_contract_violations(fake_stripe)
    fake_stripe.allow_contract_violations = True
    check_contract_violations(fake_stripe)


def test_wrong_method_on_a_known_path_is_404(fake_stripe: FakeStripe) -> None:
    request = urllib.request.Request(
        f"{fake_stripe.url}/v1/prices",
        method="DELETE",
        headers={"Authorization": f"Bearer {FAKE_STRIPE_API_KEY}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request)
    assert info.value.code == 404
    body = json.loads(info.value.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert "Unrecognized request URL (DELETE: /v1/prices)" in body["error"]["message"]


def test_every_route_has_a_contract() -> None:
    named = {name for _, _, name in routes() if name}
    assert named <= known_params()
    unvalidated = {path for _, path, name in routes() if name is None}
    assert all(path.startswith("^/v2/") for path in unvalidated)


def test_committed_contract_is_what_the_installed_sdk_generates() -> None:
    committed = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    if committed["stripe_sdk_version"] != stripe.VERSION:
        pytest.skip("contract generated from another stripe SDK version")
    assert build_contract() == committed
