"""Subscriptions, periods, checkout, portal and lifecycle helpers of the fake Stripe."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import stripe

from kernia_billing.testing import FakeStripe
from kernia_billing.testing.fake_stripe.store import period_boundary

pytestmark = pytest.mark.clock_matrix

FIXTURE_KEYS: dict[str, list[str]] = json.loads(
    (Path(__file__).parent / "data" / "stripe_fixture_keys.json").read_text()
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def assert_fixture_keys(obj: Any, resource: str) -> None:
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    missing = set(FIXTURE_KEYS[resource]) - set(data)
    assert not missing, f"{resource} lacks {sorted(missing)}"


def ts(year: int, month: int, day: int) -> int:
    return calendar.timegm(dt.datetime(year, month, day, 12, 0).timetuple())


def setup_plan(interval: str = "month", amount: int = 2000, count: int = 1) -> stripe.Price:
    product = stripe.Product.create(name="Pro")
    return stripe.Price.create(
        product=product.id,
        unit_amount=amount,
        currency="usd",
        recurring={"interval": interval, "interval_count": count},
    )


def post_form(
    url: str, opener: urllib.request.OpenerDirector = _NO_REDIRECT
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def get_page(url: str) -> str:
    with _NO_PROXY.open(url, timeout=5) as response:
        return str(response.read().decode())


# ------------------------------------------------------------------ periods


def test_period_boundary_clamps_to_month_end_from_the_anchor() -> None:
    anchor = ts(2025, 1, 31)
    ends = [
        dt.datetime.utcfromtimestamp(period_boundary(anchor, "month", 1, n)).date()
        for n in range(1, 4)
    ]
    assert [str(d) for d in ends] == ["2025-02-28", "2025-03-31", "2025-04-30"]
    leap = [dt.datetime.utcfromtimestamp(period_boundary(ts(2024, 1, 31), "month", 1, 1)).date()]
    assert str(leap[0]) == "2024-02-29"
    assert period_boundary(anchor, "year", 1, 1) == ts(2026, 1, 31)
    assert period_boundary(anchor, "week", 2, 1) == anchor + 14 * 86400
    assert period_boundary(anchor, "month", 3, 1) == ts(2025, 4, 30)


def test_subscription_create_shapes_and_item_periods(fake_stripe: FakeStripe) -> None:
    fake_stripe.set_clock(ts(2025, 1, 31))
    price = setup_plan()
    customer = stripe.Customer.create(email="sub@example.com")
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price.id, "quantity": 2}], metadata={"org": "1"}
    )
    assert sub.id.startswith("sub_") and sub.status == "active"
    assert_fixture_keys(sub, "subscription")
    assert "current_period_start" not in sub.to_dict()
    item = sub["items"].data[0]
    assert item.id.startswith("si_") and item.quantity == 2
    assert_fixture_keys(item, "subscription_item")
    assert (item.current_period_start, item.current_period_end) == (
        ts(2025, 1, 31),
        ts(2025, 2, 28),
    )
    assert item.plan.id == price.id and item.plan.amount == 2000 and item.plan.interval == "month"
    assert_fixture_keys(item.plan, "plan")
    assert sub.cancel_at is None and sub.ended_at is None and sub.trial_end is None

    invoice = stripe.Invoice.retrieve(sub.latest_invoice)
    assert (
        invoice.status == "paid" and invoice.amount_paid == 4000 and invoice.subscription == sub.id
    )
    assert_fixture_keys(invoice, "invoice")
    assert_fixture_keys(invoice.lines.data[0], "line_item")
    assert [i.id for i in stripe.Invoice.list(customer=customer.id)] == [invoice.id]

    assert stripe.SubscriptionItem.retrieve(item.id).subscription == sub.id
    assert [i.id for i in stripe.SubscriptionItem.list(subscription=sub.id)] == [item.id]

    advanced = fake_stripe.advance_subscription(sub.id)
    periods = [
        (i["current_period_start"], i["current_period_end"]) for i in advanced["items"]["data"]
    ]
    assert periods == [(ts(2025, 2, 28), ts(2025, 3, 31))]
    assert fake_stripe.now() == ts(2025, 2, 28)
    advanced = fake_stripe.advance_subscription(sub.id)
    assert advanced["items"]["data"][0]["current_period_end"] == ts(2025, 4, 30)


def test_subscription_errors(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    one_time = stripe.Price.create(product=price.product, unit_amount=5, currency="usd")
    customer = stripe.Customer.create()
    with pytest.raises(stripe.InvalidRequestError) as missing_customer:
        stripe.Subscription.create(customer="cus_missing", items=[{"price": price.id}])
    assert missing_customer.value.http_status == 404 and missing_customer.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as no_items:
        stripe.Subscription.create(customer=customer.id)
    assert no_items.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Subscription.create(customer=customer.id, items=[{"price": one_time.id}])
    with pytest.raises(stripe.InvalidRequestError) as missing_price:
        stripe.Subscription.create(customer=customer.id, items=[{"price": "price_nope"}])
    assert missing_price.value.param == "items[0][price]"


def test_trial_and_trial_end_now(fake_stripe: FakeStripe) -> None:
    fake_stripe.set_clock(ts(2025, 3, 1))
    price = setup_plan()
    customer = stripe.Customer.create()
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price.id}], trial_period_days=14
    )
    item = sub["items"].data[0]
    assert sub.status == "trialing" and sub.trial_end == ts(2025, 3, 15)
    assert (item.current_period_start, item.current_period_end) == (ts(2025, 3, 1), ts(2025, 3, 15))
    assert stripe.Invoice.retrieve(sub.latest_invoice).amount_paid == 0

    fake_stripe.advance_clock(86400)
    active = stripe.Subscription.modify(sub.id, trial_end="now")
    assert active.status == "active" and active.trial_end == ts(2025, 3, 2)
    item = active["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (ts(2025, 3, 2), ts(2025, 4, 2))
    update = fake_stripe.events("customer.subscription.updated")[-1]
    assert update["data"]["previous_attributes"]["status"] == "trialing"


def test_advance_trialing_subscription_becomes_active(fake_stripe: FakeStripe) -> None:
    fake_stripe.set_clock(ts(2025, 3, 1))
    price = setup_plan()
    customer = stripe.Customer.create()
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price.id}], trial_period_days=7
    )
    after = fake_stripe.advance_subscription(sub.id)
    assert after["status"] == "active"
    item = after["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (
        ts(2025, 3, 8),
        ts(2025, 4, 8),
    )


def test_subscription_update_items_and_cancel_at_period_end(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    bigger = stripe.Price.create(
        product=price.product, unit_amount=5000, currency="usd", recurring={"interval": "month"}
    )
    customer = stripe.Customer.create()
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    item_id = sub["items"].data[0].id
    period_end = sub["items"].data[0].current_period_end

    updated = stripe.Subscription.modify(
        sub.id, items=[{"id": item_id, "price": bigger.id, "quantity": 3}]
    )
    item = updated["items"].data[0]
    assert (item.id, item.price.id, item.quantity) == (item_id, bigger.id, 3)
    assert item.current_period_end == period_end

    added = stripe.Subscription.modify(sub.id, items=[{"price": price.id}])
    assert len(added["items"].data) == 2
    removed = stripe.Subscription.modify(
        sub.id, items=[{"id": added["items"].data[1].id, "deleted": True}]
    )
    assert [i.id for i in removed["items"].data] == [item_id]

    scheduled = stripe.Subscription.modify(
        sub.id, cancel_at_period_end=True, metadata={"why": "price"}
    )
    assert scheduled.cancel_at_period_end is True and scheduled.cancel_at == period_end
    assert scheduled.status == "active"
    paused = stripe.Subscription.modify(sub.id, pause_collection={"behavior": "void"})
    assert paused.pause_collection.behavior == "void"
    assert stripe.Subscription.modify(sub.id, pause_collection="").pause_collection is None

    ended = fake_stripe.advance_subscription(sub.id)
    assert ended["status"] == "canceled" and ended["ended_at"] == period_end
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.deleted"


def test_cancel_and_list_subscriptions(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    customer = stripe.Customer.create()
    keep = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    gone = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    canceled = stripe.Subscription.cancel(gone.id)
    assert canceled.status == "canceled" and canceled.ended_at and canceled.canceled_at
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.deleted"
    assert [s.id for s in stripe.Subscription.list(customer=customer.id)] == [keep.id]
    assert [s.id for s in stripe.Subscription.list(status="all")] == [gone.id, keep.id]
    assert [s.id for s in stripe.Subscription.list(status="canceled")] == [gone.id]
    assert len(stripe.Subscription.list(price=price.id).data) == 1
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Subscription.cancel(gone.id)


def test_fail_payment_and_status_helpers(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    customer = stripe.Customer.create()
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    failed = fake_stripe.fail_payment(sub.id)
    assert failed["status"] == "past_due"
    types = [e["type"] for e in fake_stripe.events()][-4:]
    assert types == [
        "invoice.created",
        "invoice.finalized",
        "invoice.payment_failed",
        "customer.subscription.updated",
    ]
    assert stripe.Invoice.list(status="open").data[0].subscription == sub.id

    fake_stripe.set_subscription_status(sub.id, "paused")
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.paused"
    fake_stripe.set_subscription_status(sub.id, "active")
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.resumed"
    fake_stripe.set_subscription_status(sub.id, "unpaid")
    last = fake_stripe.events()[-1]
    assert last["type"] == "customer.subscription.updated"
    assert last["data"]["previous_attributes"] == {"status": "active"}


def test_advance_subscription_emits_renewal_events(fake_stripe: FakeStripe) -> None:
    fake_stripe.set_clock(ts(2025, 5, 10))
    price = setup_plan(interval="year")
    customer = stripe.Customer.create()
    fake_stripe.set_default_payment_method(customer.id)
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    before = len(fake_stripe.events())
    fake_stripe.advance_subscription(sub.id)
    new = fake_stripe.events()[before:]
    assert [e["type"] for e in new] == [
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ]
    previous = new[-1]["data"]["previous_attributes"]
    assert previous["items"]["data"][0]["current_period_start"] == ts(2025, 5, 10)
    assert new[1]["data"]["object"]["billing_reason"] == "subscription_cycle"
    assert stripe.Subscription.retrieve(sub.id).latest_invoice == new[1]["data"]["object"]["id"]


# ------------------------------------------------------------------ checkout


def test_checkout_session_flow(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    session = stripe.checkout.Session.create(
        mode="subscription",
        line_items=[{"price": price.id, "quantity": 1}],
        customer_email="new@example.com",
        client_reference_id="user-42",
        success_url="https://app.example/done?session={CHECKOUT_SESSION_ID}",
        cancel_url="https://app.example/cancel",
        metadata={"plan": "pro"},
        subscription_data={"metadata": {"org": "7"}},
    )
    assert session.id.startswith("cs_test_") and session.status == "open"
    assert session.url == f"{fake_stripe.url}/checkout/{session.id}"
    assert session.amount_total == 2000
    assert_fixture_keys(session, "checkout.session")
    line_items = stripe.checkout.Session.list_line_items(session.id)
    assert [li.price.id for li in line_items] == [price.id]
    assert_fixture_keys(line_items.data[0], "item")

    before = len(fake_stripe.events())
    completed = fake_stripe.complete_checkout_session(session.id)
    types = [e["type"] for e in fake_stripe.events()[before:]]
    # Stripe's sequence: an incomplete subscription whose first invoice is paid.
    assert types == [
        "customer.created",
        "payment_method.attached",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
        "checkout.session.completed",
    ]
    events = fake_stripe.events()[before:]
    assert events[2]["data"]["object"]["status"] == "incomplete"
    assert events[7]["data"]["object"]["status"] == "active"
    assert events[7]["data"]["previous_attributes"] == {"status": "incomplete"}
    assert completed["status"] == "complete" and completed["payment_status"] == "paid"
    fetched = stripe.checkout.Session.retrieve(
        session.id, expand=["subscription", "customer", "line_items"]
    )
    assert fetched.customer.email == "new@example.com"
    assert fetched.subscription.metadata.to_dict() == {"org": "7"}
    assert fetched.line_items.data[0].quantity == 1
    assert [s.id for s in stripe.checkout.Session.list(customer=fetched.customer.id)] == [
        session.id
    ]
    with pytest.raises(stripe.InvalidRequestError):
        stripe.checkout.Session.expire(session.id)


def test_checkout_trial_existing_customer_and_expire(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    customer = stripe.Customer.create(email="old@example.com")
    session = stripe.checkout.Session.create(
        mode="subscription",
        customer=customer.id,
        line_items=[{"price": price.id, "quantity": 1}],
        subscription_data={"trial_period_days": 7},
        success_url="https://app.example/ok",
    )
    before = len(fake_stripe.events())
    fake_stripe.complete_checkout_session(session.id)
    types = [e["type"] for e in fake_stripe.events()[before:]]
    assert types[:3] == [
        "payment_method.attached",
        "customer.subscription.created",
        "invoice.created",
    ]
    assert "customer.subscription.updated" not in types
    done = stripe.checkout.Session.retrieve(session.id, expand=["subscription"])
    assert done.customer == customer.id and done.subscription.status == "trialing"

    other = stripe.checkout.Session.create(
        mode="subscription",
        line_items=[{"price": price.id, "quantity": 1}],
        success_url="https://x",
    )
    assert stripe.checkout.Session.expire(other.id).status == "expired"
    assert fake_stripe.events()[-1]["type"] == "checkout.session.expired"


def test_checkout_validation(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    one_time = stripe.Price.create(product=price.product, unit_amount=5, currency="usd")
    with pytest.raises(stripe.InvalidRequestError):
        stripe.checkout.Session.create(
            mode="subscription", line_items=[{"price": one_time.id, "quantity": 1}]
        )
    with pytest.raises(stripe.InvalidRequestError):
        stripe.checkout.Session.create(
            mode="payment", line_items=[{"price": price.id, "quantity": 1}]
        )
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe.checkout.Session.create(mode="subscription")
    assert missing.value.code == "parameter_missing"
    paid = stripe.checkout.Session.create(
        mode="payment", line_items=[{"price": one_time.id, "quantity": 2}]
    )
    assert paid.amount_total == 10
    assert fake_stripe.complete_checkout_session(paid.id)["payment_intent"].startswith("pi_")


def test_hosted_checkout_page(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    session = stripe.checkout.Session.create(
        mode="subscription",
        line_items=[{"price": price.id, "quantity": 1}],
        success_url="https://app.example/done?session={CHECKOUT_SESSION_ID}",
    )
    html = get_page(session.url)
    assert "Pay and subscribe" in html and "Pro" in html
    status, headers = post_form(f"{session.url}/complete")
    assert status == 303
    assert headers["Location"] == f"https://app.example/done?session={session.id}"
    assert stripe.checkout.Session.retrieve(session.id).status == "complete"


# ------------------------------------------------------------------ portal


def test_billing_portal(fake_stripe: FakeStripe) -> None:
    price = setup_plan()
    customer = stripe.Customer.create(email="portal@example.com")
    sub = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    portal = stripe.billing_portal.Session.create(
        customer=customer.id, return_url="https://app.example/account"
    )
    assert portal.id.startswith("bps_") and portal.url == f"{fake_stripe.url}/portal/{portal.id}"
    assert_fixture_keys(portal, "billing_portal.session")
    html = get_page(portal.url)
    assert "Cancel at period end" in html and "https://app.example/account" in html

    status, headers = post_form(f"{portal.url}/subscriptions/{sub.id}/cancel")
    assert status == 303 and headers["Location"] == f"/portal/{portal.id}"
    assert stripe.Subscription.retrieve(sub.id).cancel_at_period_end is True
    assert "Resume" in get_page(portal.url)
    post_form(f"{portal.url}/subscriptions/{sub.id}/resume")
    assert stripe.Subscription.retrieve(sub.id).cancel_at_period_end is False
    assert fake_stripe.events()[-1]["type"] == "customer.subscription.updated"

    with pytest.raises(stripe.InvalidRequestError):
        stripe.billing_portal.Session.create(customer="cus_nope")
