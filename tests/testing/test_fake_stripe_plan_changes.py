"""Plan changes in the fake Stripe, through the SDK: prorations, previews, schedules,
portal configurations and trial_will_end."""

from __future__ import annotations

import pytest
import stripe

from kernia_billing.testing import FakeStripe

pytestmark = pytest.mark.clock_matrix


def price(amount: int, interval: str = "month", name: str = "Pro") -> stripe.Price:
    product = stripe.Product.create(name=name)
    return stripe.Price.create(
        product=product.id, unit_amount=amount, currency="usd", recurring={"interval": interval}
    )


def subscribe(fake: FakeStripe, price_id: str, quantity: int = 1) -> stripe.Subscription:
    customer = stripe.Customer.create(email="a@example.com")
    fake.set_default_payment_method(customer.id)
    return stripe.Subscription.create(
        customer=customer.id, items=[{"price": price_id, "quantity": quantity}]
    )


def half_period(fake: FakeStripe, sub: stripe.Subscription) -> None:
    item = sub["items"]["data"][0]
    fake.set_clock((item["current_period_start"] + item["current_period_end"]) // 2)


def test_upgrade_with_always_invoice_charges_the_prorated_difference(
    fake_stripe: FakeStripe,
) -> None:
    pro, business = price(1000), price(3000, name="Business")
    sub = subscribe(fake_stripe, pro.id)
    half_period(fake_stripe, sub)
    item = sub["items"]["data"][0]
    preview = stripe.Invoice.create_preview(
        subscription=sub.id,
        subscription_details={
            "items": [{"id": item.id, "price": business.id}],
            "proration_behavior": "always_invoice",
        },
    )
    updated = stripe.Subscription.modify(
        sub.id, items=[{"id": item.id, "price": business.id}], proration_behavior="always_invoice"
    )
    invoice = stripe.Invoice.retrieve(updated.latest_invoice)
    assert invoice.billing_reason == "subscription_update"
    amounts = sorted(line.amount for line in invoice.lines.data)
    assert amounts[0] < 0 < amounts[1]
    assert abs(sum(amounts) - 1000) <= 1  # half of (3000 - 1000)
    assert invoice.status == "paid"
    assert preview.amount_due == invoice.amount_due
    assert all(line.parent.subscription_item_details.proration for line in invoice.lines.data)
    types = [e["type"] for e in fake_stripe.events()]
    assert "invoiceitem.created" in types and types.count("customer.subscription.updated") >= 1


def test_create_prorations_waits_for_the_renewal_and_none_creates_nothing(
    fake_stripe: FakeStripe,
) -> None:
    team = price(900, name="Team")
    sub = subscribe(fake_stripe, team.id, quantity=5)
    half_period(fake_stripe, sub)
    item = sub["items"]["data"][0]
    latest = sub.latest_invoice
    updated = stripe.Subscription.modify(sub.id, items=[{"id": item.id, "quantity": 3}])
    assert updated.latest_invoice == latest  # nothing invoiced now
    upcoming = stripe.Invoice.create_preview(subscription=sub.id)
    prorations = [
        line.amount
        for line in upcoming.lines.data
        if line.parent.subscription_item_details.proration
    ]
    assert sum(prorations) == -900  # two seats, half a period
    assert upcoming.amount_due == 3 * 900 - 900
    renewed = fake_stripe.advance_subscription(sub.id)
    assert stripe.Invoice.retrieve(renewed["latest_invoice"]).amount_due == 3 * 900 - 900
    before = len(fake_stripe.store.list_objects("invoiceitem"))
    stripe.Subscription.modify(
        sub.id, items=[{"id": item.id, "quantity": 4}], proration_behavior="none"
    )
    assert len(fake_stripe.store.list_objects("invoiceitem")) == before


def test_switching_to_a_yearly_price_starts_a_new_period_now(fake_stripe: FakeStripe) -> None:
    monthly = price(1200)
    yearly = stripe.Price.create(
        product=monthly.product, unit_amount=12000, currency="usd", recurring={"interval": "year"}
    )
    sub = subscribe(fake_stripe, monthly.id)
    half_period(fake_stripe, sub)
    item = sub["items"]["data"][0]
    updated = stripe.Subscription.modify(sub.id, items=[{"id": item.id, "price": yearly.id}])
    new_item = updated["items"]["data"][0]
    assert new_item.current_period_start == fake_stripe.now()
    assert new_item.price.recurring.interval == "year"
    invoice = stripe.Invoice.retrieve(updated.latest_invoice)
    assert invoice.amount_due == 12000 - 600
    assert invoice.status == "paid"


def test_preview_prices_metered_items_from_this_periods_usage(fake_stripe: FakeStripe) -> None:
    meter = fake_stripe.create_meter(
        display_name="Messages",
        event_name="messages",
        default_aggregation={"formula": "sum"},
    )
    base = price(1000)
    metered = stripe.Price.create(
        product=base.product,
        unit_amount=2,
        currency="usd",
        recurring={"interval": "month", "usage_type": "metered", "meter": meter["id"]},
    )
    customer = stripe.Customer.create(email="m@example.com")
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": base.id}, {"price": metered.id}]
    )
    fake_stripe.advance_clock(3600)
    stripe.billing.MeterEvent.create(
        event_name="messages",
        payload={"stripe_customer_id": customer.id, "value": "150"},
        identifier="e1",
    )
    preview = stripe.Invoice.create_preview(customer=customer.id)
    by_price = {line.pricing.price_details.price: line for line in preview.lines.data}
    assert by_price[metered.id].quantity == 150
    assert by_price[metered.id].amount == 300
    assert preview.amount_due == 1300
    assert preview.subscription == sub.id


def test_preview_refusals(fake_stripe: FakeStripe) -> None:
    customer = stripe.Customer.create(email="n@example.com")
    with pytest.raises(stripe.InvalidRequestError) as error:
        stripe.Invoice.create_preview(customer=customer.id)
    assert error.value.code == "invoice_upcoming_none"
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Invoice.create_preview()


def test_a_schedule_downgrades_at_the_period_end_and_release_cancels_it(
    fake_stripe: FakeStripe,
) -> None:
    business, pro = price(3000, name="Business"), price(1000)
    sub = subscribe(fake_stripe, business.id)
    schedule = stripe.SubscriptionSchedule.create(from_subscription=sub.id)
    assert stripe.Subscription.retrieve(sub.id).schedule == schedule.id
    with pytest.raises(stripe.InvalidRequestError):
        stripe.SubscriptionSchedule.create(from_subscription=sub.id)
    phase = schedule.phases[0]
    with pytest.raises(stripe.InvalidRequestError) as error:
        stripe.SubscriptionSchedule.modify(
            schedule.id,
            phases=[
                {
                    "items": [{"price": business.id}],
                    "start_date": phase.start_date + 1,
                    "end_date": phase.end_date,
                }
            ],
        )
    assert "start date of the current phase" in str(error.value)
    stripe.SubscriptionSchedule.modify(
        schedule.id,
        end_behavior="release",
        phases=[
            {
                "items": [{"price": business.id}],
                "start_date": phase.start_date,
                "end_date": phase.end_date,
            },
            {"items": [{"price": pro.id}], "duration": {"interval": "month"}},
        ],
    )
    renewed = fake_stripe.advance_subscription(sub.id)
    assert renewed["items"]["data"][0]["price"]["id"] == pro.id
    assert stripe.Invoice.retrieve(renewed["latest_invoice"]).amount_due == 1000
    types = [e["type"] for e in fake_stripe.events()]
    assert "subscription_schedule.created" in types and "subscription_schedule.updated" in types

    second = subscribe(fake_stripe, business.id)
    schedule = stripe.SubscriptionSchedule.create(from_subscription=second.id)
    released = stripe.SubscriptionSchedule.release(schedule.id)
    assert released.status == "released" and released.released_subscription == second.id
    assert stripe.Subscription.retrieve(second.id).schedule is None
    kept = fake_stripe.advance_subscription(second.id)
    assert kept["items"]["data"][0]["price"]["id"] == business.id
    with pytest.raises(stripe.InvalidRequestError):
        stripe.SubscriptionSchedule.release(schedule.id)


def test_portal_configuration_lists_products_and_sessions_use_it(fake_stripe: FakeStripe) -> None:
    pro = price(1000)
    one_time = stripe.Price.create(product=pro.product, unit_amount=500, currency="usd")
    features = {
        "subscription_update": {
            "enabled": True,
            "default_allowed_updates": ["price", "quantity"],
            "products": [{"product": pro.product, "prices": [pro.id]}],
        }
    }
    config = stripe.billing_portal.Configuration.create(features=features)
    assert config.features.subscription_update.products[0].prices == [pro.id]
    with pytest.raises(stripe.InvalidRequestError):
        stripe.billing_portal.Configuration.create(
            features={
                "subscription_update": {
                    "enabled": True,
                    "products": [{"product": pro.product, "prices": [one_time.id]}],
                }
            }
        )
    customer = stripe.Customer.create(email="p@example.com")
    session = stripe.billing_portal.Session.create(customer=customer.id, configuration=config.id)
    assert session.configuration == config.id
    stripe.billing_portal.Configuration.modify(config.id, active=False)
    with pytest.raises(stripe.InvalidRequestError):
        stripe.billing_portal.Session.create(customer=customer.id, configuration=config.id)


def test_trial_will_end_is_sent_three_days_before_the_trial_ends(fake_stripe: FakeStripe) -> None:
    pro = price(1000)
    customer = stripe.Customer.create(email="t@example.com")
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": pro.id}], trial_period_days=14
    )
    assert fake_stripe.store.trial_will_end_due() == []
    fake_stripe.set_clock(sub.trial_end - 3 * 86400)
    assert fake_stripe.store.trial_will_end_due() == [sub.id]
    assert fake_stripe.store.trial_will_end_due() == []
    assert [
        e["data"]["object"]["id"]
        for e in fake_stripe.events("customer.subscription.trial_will_end")
    ] == [sub.id]
