"""The helpers a downstream project's tests use: overrides, signed delivery, fixtures."""

from __future__ import annotations

import pytest

import kernia_billing
from kernia_billing.models import BillingCustomer, WebhookDelivery
from kernia_billing.testing import override_balance, override_plan, post_event
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    free = PlanFactory(key="free", is_default=True)
    pro = PlanFactory(key="pro")
    messages = FeatureFactory(key="messages")
    sso = FeatureFactory(key="sso", kind="boolean")
    PlanFeatureFactory(plan=free, feature=messages, included=10)
    PlanFeatureFactory(plan=pro, feature=messages, included=1000)
    PlanFeatureFactory(plan=pro, feature=sso, included=0, reset_period="none")
    return {"free": free, "pro": pro}


def test_override_plan_gives_a_plan_for_the_block_and_keeps_usage(catalog):
    user = UserFactory()
    kernia_billing.track(user, "messages", 4)
    assert not kernia_billing.check(user, "sso").allowed

    with override_plan(user, "pro") as customer:
        assert customer.plan.key == "pro"
        assert kernia_billing.check(user, "sso").allowed
        assert kernia_billing.check(user, "messages").balance == 996  # usage is kept

    assert not kernia_billing.check(user, "sso").allowed
    assert kernia_billing.check(user, "messages").balance == 6


def test_override_plan_as_a_decorator(catalog):
    user = UserFactory()

    @override_plan(user, "pro")
    def on_pro():
        return kernia_billing.check(user, "sso").allowed

    assert on_pro() is True
    assert BillingCustomer.objects.get().plan.key == "free"


def test_override_balance_for_a_granted_or_missing_feature(catalog):
    user = UserFactory()
    kernia_billing.track(user, "messages", 4)

    with override_balance(user, "messages", 1):
        assert kernia_billing.check(user, "messages").balance == 1
        assert not kernia_billing.check(user, "messages", required=2).allowed
        kernia_billing.track(user, "messages", 1)
    assert kernia_billing.check(user, "messages").balance == 5  # 10 - (4 + 1)

    with override_balance(user, "sso", None):
        assert kernia_billing.check(user, "sso").allowed
    assert not kernia_billing.check(user, "sso").allowed


def test_post_event_delivers_a_signed_event_and_a_wrong_secret_is_refused(
    client, fake_stripe, webhook_endpoint
):
    customer = fake_stripe.create_customer(email="a@example.com")
    [event] = [
        e for e in fake_stripe.store.list_objects("event") if e["type"] == "customer.created"
    ]
    assert customer["id"] in str(event)

    assert post_event(client, webhook_endpoint, fake_stripe, event).status_code == 200
    assert (
        post_event(client, webhook_endpoint, fake_stripe, event, secret="whsec_x").status_code
        == 400
    )
    outcomes = [d.outcome for d in WebhookDelivery.objects.order_by("pk")]
    assert outcomes == ["processed", "refused"]


def test_stripe_settings_use_the_fakes_key(stripe_settings, fake_stripe):
    import stripe

    from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY

    assert stripe_settings.STRIPE_TEST_SECRET_KEY == FAKE_STRIPE_API_KEY
    assert stripe.Customer.create(email="b@example.com")["id"].startswith("cus_")
