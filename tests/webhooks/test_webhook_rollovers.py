"""The renewal webhook's reset makes rollovers exactly as the lazy reset does."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from kernia_billing.models import Grant, GrantSource, PlanFeature
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.testing import FakeStripe
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks
from tests.webhooks.test_topups_addons import balance, pay, track

pytestmark = pytest.mark.clock_matrix


@pytest.mark.django_db
def test_renewal_webhook_rolls_the_unused_plan_grant_over_once(
    client: Any, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks
) -> None:
    PlanFeature.objects.filter(plan=plans.pro, feature__key="messages").update(
        rollover_max=500, rollover_expires_after=1
    )
    client.force_login(UserFactory())
    webhooks.deliver_pending()
    session_id = pay(client, fake_stripe, plan="pro")
    sub_id = str(stripe.checkout.Session.retrieve(session_id).subscription)
    webhooks.deliver_pending()
    assert track(client, 800).status_code == 201
    fake_stripe.advance_subscription(sub_id)
    webhooks.deliver_pending()
    rollovers = list(Grant.objects.filter(source=GrantSource.ROLLOVER))
    assert [(g.amount, g.remaining) for g in rollovers] == [(200, 200)]
    assert balance(client) == 1000 + 200
    # A replayed renewal changes nothing; the next renewal caps what is alive at 500.
    webhooks.post(fake_stripe.events("customer.subscription.updated")[-1] | {"id": "evt_again"})
    assert Grant.objects.filter(source=GrantSource.ROLLOVER).count() == 1
    assert balance(client) == 1200
    assert audit_ledger() == []
