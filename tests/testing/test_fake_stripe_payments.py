"""Subscriptions need a payment method, as on Stripe: incomplete, paid, past due."""

from __future__ import annotations

import pytest
import stripe

from kernia_billing.testing import FakeStripe


def plan() -> stripe.Price:
    product = stripe.Product.create(name="Pro")
    return stripe.Price.create(
        product=product.id, unit_amount=2000, currency="usd", recurring={"interval": "month"}
    )


def test_without_a_payment_method_a_subscription_starts_incomplete(
    fake_stripe: FakeStripe,
) -> None:
    price = plan()
    customer = stripe.Customer.create(email="a@example.com")
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    assert sub.status == "incomplete"
    invoice = stripe.Invoice.retrieve(
        sub.latest_invoice, expand=["payments.data.payment.payment_intent"]
    )
    assert (invoice.status, invoice.amount_paid, invoice.amount_remaining) == ("open", 0, 2000)
    intent = invoice.payments.data[0].payment.payment_intent
    assert intent.status == "requires_payment_method" and intent.amount == 2000
    assert stripe.PaymentIntent.retrieve(intent.id).status == "requires_payment_method"
    assert [e["type"] for e in fake_stripe.events()][-3:] == [
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
    ]

    card = fake_stripe.create_payment_method(customer.id)
    paid = stripe.Invoice.pay(invoice.id, payment_method=card["id"])
    assert paid.status == "paid" and paid.amount_paid == 2000
    assert stripe.Subscription.retrieve(sub.id).status == "active"
    assert stripe.PaymentIntent.retrieve(intent.id).status == "succeeded"
    update = fake_stripe.events("customer.subscription.updated")[-1]
    assert update["data"]["previous_attributes"] == {"status": "incomplete"}


def test_a_default_payment_method_or_a_trial_starts_it_otherwise(fake_stripe: FakeStripe) -> None:
    price = plan()
    customer = stripe.Customer.create()
    assert (
        stripe.Subscription.create(
            customer=customer.id, items=[{"price": price.id}], trial_period_days=7
        ).status
        == "trialing"
    )
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    assert sub.status == "active"
    assert stripe.Invoice.retrieve(sub.latest_invoice).status == "paid"
    incomplete = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price.id}], payment_behavior="default_incomplete"
    )
    assert incomplete.status == "incomplete"


def test_error_if_incomplete_without_a_payment_method_creates_nothing(
    fake_stripe: FakeStripe,
) -> None:
    price = plan()
    customer = stripe.Customer.create()
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe.Subscription.create(
            customer=customer.id,
            items=[{"price": price.id}],
            payment_behavior="error_if_incomplete",
        )
    assert "no attached payment source or default payment method" in str(info.value.user_message)
    assert stripe.Subscription.list(status="all").data == []
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Subscription.create(
            customer=customer.id, items=[{"price": price.id}], default_payment_method="pm_nope"
        )


def test_a_renewal_without_a_payment_method_leaves_it_past_due(fake_stripe: FakeStripe) -> None:
    price = plan()
    customer = stripe.Customer.create()
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price.id}], trial_period_days=3
    )
    after = fake_stripe.advance_subscription(sub.id)
    assert after["status"] == "past_due"
    assert stripe.Invoice.retrieve(after["latest_invoice"]).status == "open"
    assert fake_stripe.events("invoice.payment_failed")


def test_the_python_helper_pays_with_a_test_card_unless_told_not_to(
    fake_stripe: FakeStripe,
) -> None:
    price = plan()
    customer = stripe.Customer.create()
    assert (
        fake_stripe.create_subscription(customer=customer.id, items=[{"price": price.id}])["status"]
        == "active"
    )
    unpaid = fake_stripe.create_subscription(
        customer=customer.id, items=[{"price": price.id}], paid=False
    )
    assert unpaid["status"] == "incomplete"
