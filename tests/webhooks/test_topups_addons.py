"""Top-ups and add-ons end to end: REST -> fake Stripe -> return page and signed webhooks.

A top-up (one-time price mapped to a pack) is bought through Checkout in mode=payment
and granted once, whichever of the return page and the webhook comes first; a full
refund revokes what is left. An add-on (recurring price mapped to an add-on) follows
its subscription item: quantity changes, renewals and removal.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from kernia_billing.models import (
    AddOn,
    AddOnFeature,
    AddOnPrice,
    CatalogPrice,
    Feature,
    Grant,
    GrantSource,
    ReviewState,
    TopUpPack,
)
from kernia_billing.services import catalog
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.testing import FakeStripe
from tests.clock import PERIOD_BREAKS
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks

pytestmark = pytest.mark.clock_matrix(*PERIOD_BREAKS)  # webhook flows: tests/clock.py

CHECKOUT_URL = "/api/auth/billing/checkout"
ADDONS_URL = "/api/auth/billing/addons"


def approved_price(fake: FakeStripe, name: str, amount: int, **extra: Any) -> CatalogPrice:
    product = fake.create_product(name=name)
    created = fake.create_price(product=product["id"], unit_amount=amount, currency="usd", **extra)
    catalog.apply_stripe_product(product)
    catalog.apply_stripe_price(created)
    row = CatalogPrice.objects.get(stripe_id=created["id"])
    row.review_state = ReviewState.APPROVED
    row.reviewed_fingerprint = row.fingerprint
    row.save()
    return row


def messages_pack(fake: FakeStripe, *, days: int | None = None) -> TopUpPack:
    price = approved_price(fake, "1,000 messages", 500)
    return TopUpPack.objects.create(
        key="messages-1000",
        name="1,000 messages",
        feature=Feature.objects.get(key="messages"),
        amount=1000,
        expires_after_days=days,
        price=price,
    )


def pay(client: Any, fake: FakeStripe, *, follow_return: bool = True, **body: Any) -> str:
    body.setdefault("successUrl", "http://testserver/thanks")
    response = client.post(CHECKOUT_URL, body, content_type="application/json")
    assert response.status_code == 200, response.content
    session_id = str(response.json()["sessionId"])
    fake.complete_checkout_session(session_id)
    if follow_return:
        session = stripe.checkout.Session.retrieve(session_id)
        parts = urlsplit(session.success_url.replace("{CHECKOUT_SESSION_ID}", session_id))
        back = client.get(parts.path, parse_qs(parts.query))
        assert back.status_code == 302, back.content
    return session_id


def balance(client: Any, feature: str = "messages") -> int:
    response = client.post("/api/auth/billing/check", {"feature": feature}, "application/json")
    assert response.status_code == 200, response.content
    return int(response.json()["balance"])


def track(client: Any, amount: int) -> Any:
    return client.post(
        "/api/auth/billing/track", {"feature": "messages", "amount": amount}, "application/json"
    )


@pytest.mark.django_db
def test_topup_bought_through_checkout_is_granted_once_and_refund_revokes_the_rest(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    pack = messages_pack(fake_stripe, days=30)
    user = UserFactory()
    client.force_login(user)
    webhooks.deliver_pending()
    assert balance(client) == 100  # Free

    session_id = pay(client, fake_stripe, price=pack.price.stripe_id)
    session = stripe.checkout.Session.retrieve(session_id)
    assert session.mode == "payment" and session.payment_status == "paid"
    assert str(session.payment_intent).startswith("pi_")
    assert balance(client) == 1100  # granted by the return page
    webhooks.deliver_pending()  # checkout.session.completed: the same grant, not another
    webhooks.post(fake_stripe.events("checkout.session.completed")[-1] | {"id": "evt_replay"})
    grants = list(Grant.objects.filter(source=GrantSource.TOPUP))
    assert len(grants) == 1
    topup = grants[0]
    assert topup.amount == 1000 and topup.stripe_checkout_session_id == session_id
    assert topup.stripe_price_id == pack.price.stripe_id
    assert topup.expires_at is not None
    assert (topup.expires_at - topup.created_at).days in (29, 30)

    assert track(client, 400).status_code == 201  # 100 of the plan, 300 of the pack
    assert balance(client) == 700

    # A partial refund changes no balance; a full refund revokes what is left.
    stripe.Refund.create(payment_intent=str(session.payment_intent), amount=100)
    webhooks.deliver_pending()
    assert balance(client) == 700
    stripe.Refund.create(payment_intent=str(session.payment_intent))
    types = [e["type"] for e in webhooks.pending()]
    assert "charge.refunded" in types and "refund.created" in types
    webhooks.deliver_pending()
    topup.refresh_from_db()
    assert (topup.consumed, topup.revoked, topup.remaining) == (300, 700, 0)
    assert balance(client) == 0
    assert track(client, 1).status_code == 402
    assert audit_ledger() == []


@pytest.mark.django_db
def test_topup_webhook_before_the_return_page(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    pack = messages_pack(fake_stripe)
    user = UserFactory()
    client.force_login(user)
    webhooks.deliver_pending()
    session_id = pay(client, fake_stripe, price=pack.price.stripe_id, follow_return=False)
    webhooks.deliver_pending()
    assert balance(client) == 1100
    back = client.get("/api/auth/billing/checkout/return", {"session_id": session_id})
    assert back.status_code == 200, back.content
    assert Grant.objects.filter(source=GrantSource.TOPUP).count() == 1
    assert balance(client) == 1100


@pytest.mark.django_db
def test_fake_refuses_what_stripe_refuses_for_payments(
    client: Any, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    one_time = approved_price(fake_stripe, "pack", 500)
    customer = stripe.Customer.create(email="a@example.com")
    with pytest.raises(stripe.InvalidRequestError, match="recurring price"):
        stripe.checkout.Session.create(
            mode="subscription",
            customer=customer.id,
            line_items=[{"price": one_time.stripe_id, "quantity": 1}],
            success_url="http://testserver/ok",
        )
    with pytest.raises(stripe.InvalidRequestError, match="recurring price"):
        stripe.checkout.Session.create(
            mode="payment",
            customer=customer.id,
            line_items=[{"price": plans.pro_monthly, "quantity": 1}],
            success_url="http://testserver/ok",
        )
    session = stripe.checkout.Session.create(
        mode="payment",
        customer=customer.id,
        line_items=[{"price": one_time.stripe_id, "quantity": 2}],
        success_url="http://testserver/ok",
    )
    fake_stripe.complete_checkout_session(session.id)
    paid = stripe.checkout.Session.retrieve(session.id)
    intent = stripe.PaymentIntent.retrieve(str(paid.payment_intent))
    charge = stripe.Charge.retrieve(str(intent.latest_charge))
    assert (intent.status, charge.amount, charge.paid) == ("succeeded", 1000, True)
    with pytest.raises(stripe.InvalidRequestError, match="greater than unrefunded"):
        stripe.Refund.create(charge=charge.id, amount=1001)
    with pytest.raises(stripe.InvalidRequestError, match="only specify one"):
        stripe.Refund.create(charge=charge.id, payment_intent=intent.id)
    refund = stripe.Refund.create(charge=charge.id)
    assert refund.amount == 1000 and stripe.Charge.retrieve(charge.id).refunded is True
    with pytest.raises(stripe.InvalidRequestError, match="already been refunded"):
        stripe.Refund.create(charge=charge.id)


@pytest.mark.django_db
def test_topup_checkout_refuses_bad_input(
    client: Any, fake_stripe: FakeStripe, plans: Catalog
) -> None:
    pack = messages_pack(fake_stripe)
    client.force_login(UserFactory())
    response = client.post(
        CHECKOUT_URL,
        {"price": pack.price.stripe_id, "quantity": 5000},
        content_type="application/json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    pack.active = False
    pack.save()
    response = client.post(
        CHECKOUT_URL, {"price": pack.price.stripe_id}, content_type="application/json"
    )
    assert response.status_code == 400  # not sellable: not a plan's price either


# --- add-ons ----------------------------------------------------------------------------


def team_addons(fake: FakeStripe) -> tuple[CatalogPrice, CatalogPrice]:
    seats_price = approved_price(fake, "Extra seats", 500, recurring={"interval": "month"})
    boost_price = approved_price(fake, "Message boost", 900, recurring={"interval": "month"})
    seats = AddOn.objects.create(key="extra-seats", name="Extra seats")
    AddOnFeature.objects.create(addon=seats, feature=Feature.objects.get(key="seats"), amount=5)
    AddOnPrice.objects.create(addon=seats, price=seats_price)
    boost = AddOn.objects.create(key="message-boost", name="Message boost")
    AddOnFeature.objects.create(
        addon=boost, feature=Feature.objects.get(key="messages"), amount=500
    )
    AddOnPrice.objects.create(addon=boost, price=boost_price)
    return seats_price, boost_price


def entitlement(client: Any, feature: str) -> dict[str, Any]:
    state = client.get("/api/auth/billing/customer").json()
    return next(e for e in state["entitlements"] if e["feature"] == feature)


def set_addon(client: Any, price: CatalogPrice, quantity: int) -> Any:
    return client.post(
        ADDONS_URL, {"price": price.stripe_id, "quantity": quantity}, "application/json"
    )


@pytest.mark.django_db
def test_addons_follow_their_subscription_items(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    seats_price, boost_price = team_addons(fake_stripe)
    user = UserFactory()
    client.force_login(user)
    webhooks.deliver_pending()
    refused = set_addon(client, boost_price, 1)
    assert refused.status_code == 409, refused.content  # no Stripe customer, no subscription
    assert refused.json()["error"]["code"] == "no_stripe_customer"

    session_id = pay(client, fake_stripe, plan="team", quantity=3)
    sub_id = str(stripe.checkout.Session.retrieve(session_id).subscription)
    webhooks.deliver_pending()
    assert entitlement(client, "seats")["included"] == 3
    assert balance(client) == 5000

    # Add both add-ons through the REST door (subscription items via Stripe).
    response = set_addon(client, seats_price, 2)
    assert response.status_code == 200, response.content
    assert [r["addon"] for r in response.json()["results"]] == ["extra-seats"]
    assert set_addon(client, boost_price, 2).status_code == 200
    assert entitlement(client, "seats")["included"] == 3 + 10  # 5 seats per unit
    assert balance(client) == 5000 + 1000
    webhooks.deliver_pending()  # customer.subscription.updated: nothing changes twice
    assert balance(client) == 6000
    assert Grant.objects.filter(source=GrantSource.ADDON).count() == 1

    # Spend into the add-on grant, then lower its quantity: consumed stays consumed.
    assert track(client, 5400).status_code == 201  # 5000 plan + 400 add-on
    assert set_addon(client, boost_price, 1).status_code == 200
    addon_grant = Grant.objects.get(source=GrantSource.ADDON)
    assert (addon_grant.amount - addon_grant.revoked, addon_grant.consumed) == (500, 400)
    assert balance(client) == 100
    assert set_addon(client, boost_price, 3).status_code == 200
    assert balance(client) == 1100  # 1500 entitled - 400 used

    # A renewal: the plan resets and the add-on grants afresh for the new period.
    fake_stripe.advance_subscription(sub_id)
    webhooks.deliver_pending()
    assert balance(client) == 5000 + 1500
    assert Grant.objects.filter(source=GrantSource.ADDON).count() == 2

    # Removed in Stripe directly: the webhook revokes what is left and lowers the seats.
    item = next(
        i
        for i in stripe.Subscription.retrieve(sub_id)["items"]["data"]
        if i["price"]["id"] == boost_price.stripe_id
    )
    stripe.SubscriptionItem.delete(item["id"])
    webhooks.deliver_pending()
    assert balance(client) == 5000
    assert set_addon(client, seats_price, 0).status_code == 200
    assert entitlement(client, "seats")["included"] == 3
    assert client.get(ADDONS_URL).json()["results"] == []
    assert audit_ledger() == []


@pytest.mark.django_db
def test_fake_subscription_items_refuse_what_stripe_refuses(
    fake_stripe: FakeStripe, plans: Catalog
) -> None:
    one_time = approved_price(fake_stripe, "pack", 500)
    customer = stripe.Customer.create(email="b@example.com")
    fake_stripe.create_payment_method(customer.id)
    sub = fake_stripe.create_subscription(
        customer=customer.id, items=[{"price": plans.pro_monthly}]
    )
    with pytest.raises(stripe.InvalidRequestError, match="type=one_time"):
        stripe.SubscriptionItem.create(subscription=sub["id"], price=one_time.stripe_id)
    with pytest.raises(stripe.InvalidRequestError, match="multiple subscription items"):
        stripe.SubscriptionItem.create(subscription=sub["id"], price=plans.pro_monthly)
    with pytest.raises(stripe.InvalidRequestError, match="at least one active item"):
        stripe.SubscriptionItem.delete(sub["items"]["data"][0]["id"])
    before = len(fake_stripe.events("customer.subscription.updated"))
    added = stripe.SubscriptionItem.create(
        subscription=sub["id"], price=plans.business_monthly, quantity=2
    )
    updated = stripe.SubscriptionItem.modify(added.id, quantity=4)
    assert updated.quantity == 4
    deleted = stripe.SubscriptionItem.delete(added.id)
    assert deleted.deleted is True
    events = fake_stripe.events("customer.subscription.updated")
    assert len(events) == before + 3
    assert "items" in events[-1]["data"]["previous_attributes"]
