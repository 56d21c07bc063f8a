"""Rollovers at a reset count only usage: an open hold's plan part was never used in the
period that ended (the reset wipes it, a later confirm deducts in the new period)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import stripe
import time_machine

import kernia_billing
from kernia_billing.models import Entitlement, Grant, GrantSource, PlanFeature, ResetPeriod
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.testing import FakeStripe
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.lifecycle import Catalog, Webhooks
from tests.webhooks.test_topups_addons import balance, pay, track


def _rollovers() -> list[int]:
    return list(
        Grant.objects.filter(source=GrantSource.ROLLOVER)
        .order_by("pk")
        .values_list("amount", flat=True)
    )


@pytest.mark.django_db
def test_the_lazy_reset_rolls_over_what_an_open_hold_held_of_the_plan():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(
        plan=plan,
        feature=messages,
        included=100,
        reset_period=ResetPeriod.MONTH,
        rollover_max=150,
        rollover_expires_after=2,
    )
    owner = UserFactory()
    kernia_billing.check(owner, "messages")
    kernia_billing.grant(owner, "messages", 10, source="topup")
    kernia_billing.track(owner, "messages", 30)
    boundary = Entitlement.objects.get().next_reset_at
    with time_machine.travel(boundary - timedelta(hours=1), tick=False):
        hold = kernia_billing.reserve(owner, "messages", 75, ttl=timedelta(days=1))
        assert kernia_billing.check(owner, "messages").balance == 5  # 70 plan + 5 top-up held
    with time_machine.travel(boundary + timedelta(minutes=1), tick=False):
        # 30 used: 70 unused rolls over (not 70 - 70 held); the top-up's 5 stay held.
        assert kernia_billing.check(owner, "messages").balance == 100 + 70 + 5
        assert _rollovers() == [70]
        assert audit_ledger() == []
        done = kernia_billing.confirm(hold.id, actual=75)  # deducted in the new period
        assert done.balance == 180 - 75
        assert audit_ledger() == []


@pytest.mark.django_db
def test_the_renewal_webhook_rolls_over_what_an_open_hold_held_of_the_plan(
    client: Any,
    fake_stripe: FakeStripe,
    plans: Catalog,
    webhooks: Webhooks,
) -> None:
    PlanFeature.objects.filter(plan=plans.pro, feature__key="messages").update(
        rollover_max=800, rollover_expires_after=1
    )
    user = UserFactory()
    client.force_login(user)
    webhooks.deliver_pending()
    session_id = pay(client, fake_stripe, plan="pro")
    sub_id = str(stripe.checkout.Session.retrieve(session_id).subscription)
    webhooks.deliver_pending()
    assert track(client, 500).status_code == 201
    hold = kernia_billing.reserve(user, "messages", 300, ttl=timedelta(days=7))
    assert balance(client) == 200
    fake_stripe.advance_subscription(sub_id)
    webhooks.deliver_pending()
    # 500 used of 1000: 500 rolls over (the 300 held were no usage of that period).
    assert _rollovers() == [500]
    assert balance(client) == 1000 + 500
    assert audit_ledger() == []
    assert kernia_billing.release(hold.id).status == "released"  # nothing to give back
    assert balance(client) == 1500
    assert audit_ledger() == []
