"""The fake refuses meter event cancellations as Stripe does, and keeps customer balances.

Through the real SDK: a cancel of an unknown identifier, of an event received more than
24 hours ago or of one already cancelled is refused with Stripe's error shape; a
customer balance transaction moves ``customer.balance`` and emits ``customer.updated``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import stripe
import time_machine

from kernia_billing.exceptions import StripeRefused
from kernia_billing.services import stripe_gateway


@pytest.fixture
def meter(stripe_settings, fake_stripe):
    return stripe_gateway.create(
        "billing.meter",
        display_name="Messages",
        event_name="messages",
        default_aggregation={"formula": "sum"},
    )


def _event(customer: str, value: int, identifier: str) -> None:
    stripe_gateway.create_meter_event(
        event_name="messages",
        stripe_customer_id=customer,
        value=value,
        timestamp=int(time.time()),
        identifier=identifier,
    )


def _cancel(identifier: str) -> object:
    # No idempotency key: a key would replay the first answer instead of asking again.
    return stripe.billing.MeterEventAdjustment.create(
        event_name="messages", type="cancel", cancel={"identifier": identifier}
    )


def _summary(meter: dict, customer: str) -> int:
    now = int(time.time())
    summaries = stripe_gateway.meter_event_summaries(
        meter["id"], stripe_customer_id=customer, start_time=now - 86400 * 2, end_time=now + 3600
    )
    return int(sum(s["aggregated_value"] for s in summaries))


def test_a_cancel_of_an_unknown_or_already_cancelled_event_is_refused(meter, fake_stripe):
    customer = fake_stripe.create_customer()["id"]
    _event(customer, 4, "a")
    _event(customer, 6, "b")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        _cancel("nope")
    assert unknown.value.param == "cancel[identifier]"
    _cancel("a")
    assert _summary(meter, customer) == 6
    with pytest.raises(stripe.InvalidRequestError, match="already been cancelled"):
        _cancel("a")
    assert _summary(meter, customer) == 6


def test_a_cancel_after_24_hours_is_refused_and_the_event_still_counts(meter, fake_stripe):
    customer = fake_stripe.create_customer()["id"]
    with time_machine.travel(time.time(), tick=True) as clock:
        _event(customer, 5, "late")
        clock.shift(timedelta(hours=24, minutes=1))
        with pytest.raises(StripeRefused, match="24 hours"):
            stripe_gateway.cancel_meter_event(event_name="messages", identifier="late")
        assert _summary(meter, customer) == 5


def test_balance_transactions_credit_the_customer_once_per_key(stripe_settings, fake_stripe):
    customer = fake_stripe.create_customer()["id"]
    first = stripe_gateway.credit_customer_balance(
        customer, amount=270, currency="usd", description="correction", idempotency_key="k1"
    )
    again = stripe_gateway.credit_customer_balance(
        customer, amount=270, currency="usd", description="correction", idempotency_key="k1"
    )
    assert first["id"] == again["id"]
    assert (first["amount"], first["ending_balance"], first["object"]) == (
        -270,
        -270,
        "customer_balance_transaction",
    )
    assert stripe.Customer.retrieve(customer)["balance"] == -270
    listed = stripe.Customer.list_balance_transactions(customer)
    assert [t["id"] for t in listed] == [first["id"]]
    assert stripe.Customer.retrieve_balance_transaction(customer, first["id"])["amount"] == -270
    updated = [
        e for e in fake_stripe.store.list_objects("event") if e["type"] == "customer.updated"
    ]
    assert updated[0]["data"]["previous_attributes"]["balance"] == 0


def test_balance_transactions_refuse_what_stripe_refuses(stripe_settings, fake_stripe):
    customer = fake_stripe.create_customer()["id"]
    stripe_gateway.credit_customer_balance(
        customer, amount=1, currency="usd", description="x", idempotency_key="k1"
    )
    with pytest.raises(StripeRefused, match="balance in usd"):
        stripe_gateway.credit_customer_balance(
            customer, amount=1, currency="eur", description="x", idempotency_key="k2"
        )
    with pytest.raises(StripeRefused) as missing:
        stripe_gateway.credit_customer_balance(
            "cus_missing", amount=1, currency="usd", description="x", idempotency_key="k3"
        )
    assert missing.value.not_found
    fake_stripe.allow_contract_violations = True
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Customer.create_balance_transaction(customer, currency="usd")  # no amount
