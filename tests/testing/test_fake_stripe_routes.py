"""Routes and answers Stripe has that the fake used to lack or get wrong."""

from __future__ import annotations

import pytest
import stripe

from kernia_billing.testing import FakeStripe


@pytest.fixture(autouse=True)
def refusals_expected(fake_stripe: FakeStripe) -> None:
    """These tests send requests Stripe refuses on purpose."""
    fake_stripe.allow_contract_violations = True


def test_bad_expand_paths_are_refused(fake_stripe: FakeStripe) -> None:
    product = stripe.Product.create(name="Pro")
    price = stripe.Price.create(product=product.id, unit_amount=100, currency="usd")
    assert stripe.Price.retrieve(price.id, expand=["product"]).product.name == "Pro"
    for path, segment in (("bogus", "bogus"), ("metadata", "metadata"), ("product.a", "a")):
        with pytest.raises(stripe.InvalidRequestError) as info:
            stripe.Price.retrieve(price.id, expand=[path])
        assert f"This property cannot be expanded ({segment})." in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Price.list(expand=["product"])
    assert "You may want to try expanding 'data.product' instead" in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Price.list(expand=["data.product.a.b.c"])
    assert "more than 4 levels" in str(info.value.user_message)
    # Includable fields and ids that are still null are fine.
    stripe.Price.retrieve(price.id, expand=["currency_options", "tiers"])
    stripe.Customer.retrieve(stripe.Customer.create().id, expand=["test_clock", "sources"])


def test_customer_search(fake_stripe: FakeStripe) -> None:
    ann = stripe.Customer.create(email="ann@example.com", name="Ann", metadata={"org": "7"})
    stripe.Customer.create(email="bob@example.com", name="Bob")
    found = stripe.Customer.search(query="email:'ann@example.com'")
    assert found.object == "search_result"
    assert [c.id for c in found.data] == [ann.id]
    assert [c.id for c in stripe.Customer.search(query="metadata['org']:'7'").data] == [ann.id]
    both = stripe.Customer.search(query="name:'Ann' OR name:'Bob'")
    assert len(both.data) == 2
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Customer.search(query="email = ann")
    assert info.value.param == "query"


def test_invoice_payment_intents_and_invoice_items_are_retrievable(
    fake_stripe: FakeStripe,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.InvoiceItem.retrieve("ii_missing")
    assert info.value.http_status == 404 and "No such invoiceitem" in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.PaymentIntent.retrieve("pi_missing")
    assert info.value.http_status == 404 and "No such payment_intent" in str(
        info.value.user_message
    )


def test_checkout_url_is_gone_once_the_session_is_complete_or_expired(
    fake_stripe: FakeStripe,
) -> None:
    product = stripe.Product.create(name="Pro")
    price = stripe.Price.create(
        product=product.id, unit_amount=100, currency="usd", recurring={"interval": "month"}
    )
    sessions = [
        stripe.checkout.Session.create(
            mode="subscription",
            line_items=[{"price": price.id, "quantity": 1}],
            success_url="https://example.com/ok",
        )
        for _ in range(2)
    ]
    assert all(session.url for session in sessions)
    fake_stripe.complete_checkout_session(sessions[0].id)
    stripe.checkout.Session.expire(sessions[1].id)
    assert stripe.checkout.Session.retrieve(sessions[0].id).url is None
    assert stripe.checkout.Session.retrieve(sessions[1].id).url is None
