"""Idempotency keys behave as Stripe documents them."""

from __future__ import annotations

import pytest
import stripe

from kernia_billing.testing import FakeStripe
from kernia_billing.testing.fake_stripe.idempotency import IDEMPOTENCY_KEY_TTL


@pytest.fixture(autouse=True)
def refusals_expected(fake_stripe: FakeStripe) -> None:
    """These tests send requests Stripe refuses on purpose."""
    fake_stripe.allow_contract_violations = True


def test_a_key_used_on_another_endpoint_is_refused(fake_stripe: FakeStripe) -> None:
    stripe.Customer.create(email="a@example.com", idempotency_key="k")
    with pytest.raises(stripe.IdempotencyError) as info:
        stripe.Product.create(name="Pro", idempotency_key="k")
    assert info.value.http_status == 400
    assert "same endpoint" in str(info.value.user_message)
    assert stripe.Product.list().data == []


def test_a_key_reused_with_other_parameters_is_refused(fake_stripe: FakeStripe) -> None:
    stripe.Customer.create(email="a@example.com", idempotency_key="k")
    with pytest.raises(stripe.IdempotencyError) as info:
        stripe.Customer.create(email="a@example.com", name="Ann", idempotency_key="k")
    assert "same parameters" in str(info.value.user_message)


def test_a_request_that_failed_validation_is_not_saved(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Customer.create(email="a@example.com", bogus="x", idempotency_key="k")
    customer = stripe.Customer.create(email="a@example.com", idempotency_key="k")
    assert customer.id.startswith("cus_")


def test_an_endpoint_error_is_saved_and_replayed(fake_stripe: FakeStripe) -> None:
    replayed = []
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as info:
            stripe.Price.create(
                product="prod_missing", currency="usd", unit_amount=1, idempotency_key="k"
            )
        assert info.value.http_status == 404
        replayed.append((info.value.headers or {}).get("idempotent-replayed"))
    assert replayed == [None, "true"]


def test_a_5xx_while_executing_is_saved_and_replayed(fake_stripe: FakeStripe) -> None:
    fake_stripe.inject_fault("/v1/customers", method="POST", status=500, saved=True)
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            stripe.Customer.create(email="a@example.com", idempotency_key="k")
    assert stripe.Customer.list().data == []
    # A different key runs the request.
    stripe.Customer.create(email="a@example.com", idempotency_key="k2")
    assert len(stripe.Customer.list().data) == 1


def test_keys_expire_after_about_24_hours(fake_stripe: FakeStripe) -> None:
    first = stripe.Customer.create(email="a@example.com", idempotency_key="k")
    fake_stripe.advance_clock(IDEMPOTENCY_KEY_TTL - 60)
    assert stripe.Customer.create(email="a@example.com", idempotency_key="k").id == first.id
    fake_stripe.advance_clock(120)
    again = stripe.Customer.create(email="b@example.com", idempotency_key="k")
    assert again.id != first.id
