"""The fake's billing meters behave as Stripe documents them (through the real SDK)."""

from __future__ import annotations

import time

import pytest
import stripe

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


def _event(customer, value, identifier, timestamp=None):
    return stripe_gateway.create_meter_event(
        event_name="messages",
        stripe_customer_id=customer,
        value=value,
        timestamp=timestamp or int(time.time()),
        identifier=identifier,
    )


def _total(meter, customer):
    now = int(time.time())
    summaries = stripe_gateway.meter_event_summaries(
        meter["id"], stripe_customer_id=customer, start_time=now - 3600, end_time=now + 3600
    )
    return sum(s["aggregated_value"] for s in summaries)


def test_identifiers_are_de_duplicated_and_summaries_add_up(meter, fake_stripe):
    customer = fake_stripe.create_customer()["id"]
    _event(customer, 5, "a")
    _event(customer, 5, "a")
    _event(customer, 2, "b")
    assert _total(meter, customer) == 7
    listed = list(stripe_gateway.list_all("billing.meter"))
    assert [m["id"] for m in listed] == [meter["id"]]


def test_timestamps_outside_stripes_window_are_refused(meter, fake_stripe):
    fake_stripe.allow_contract_violations = True
    customer = fake_stripe.create_customer()["id"]
    for timestamp in (int(time.time()) - 36 * 86400, int(time.time()) + 600):
        with pytest.raises(StripeRefused) as refused:
            _event(customer, 1, f"t{timestamp}", timestamp)
        assert refused.value.http_status == 400


def test_cancel_adjustment_removes_an_event_and_inactive_meters_refuse(meter, fake_stripe):
    fake_stripe.allow_contract_violations = True
    customer = fake_stripe.create_customer()["id"]
    _event(customer, 4, "x")
    stripe_gateway.cancel_meter_event(event_name="messages", identifier="x")
    assert _total(meter, customer) == 0
    stripe.billing.Meter.deactivate(meter["id"])
    with pytest.raises(StripeRefused):
        _event(customer, 1, "y")
