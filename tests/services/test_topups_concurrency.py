"""A top-up's webhook and its checkout return racing: one grant, under real threads."""

from __future__ import annotations

from typing import Any

import pytest

import kernia_billing
from kernia_billing.models import (
    CatalogPrice,
    Feature,
    Grant,
    GrantSource,
    ResetPeriod,
    ReviewState,
    TopUpPack,
)
from kernia_billing.services import catalog
from kernia_billing.services.checkout import complete_checkout, start_checkout
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.topups.fulfil import fulfil_session_id
from kernia_billing.testing import FakeStripe
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.threads import run_concurrently, skip_unless_shared_database

THREADS = 16


@pytest.fixture(autouse=True)
def _needs_shared_database(transactional_db: None) -> None:
    skip_unless_shared_database()


@pytest.mark.clock_matrix("today", "feb29-leap")
def test_webhook_and_return_racing_create_one_topup_grant(
    fake_stripe: FakeStripe, stripe_settings: Any
) -> None:
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="free", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=20, reset_period=ResetPeriod.MONTH)
    product = fake_stripe.create_product(name="Pack")
    price = fake_stripe.create_price(product=product["id"], unit_amount=500, currency="usd")
    catalog.apply_stripe_product(product)
    catalog.apply_stripe_price(price)
    row = CatalogPrice.objects.get(stripe_id=price["id"])
    row.review_state = ReviewState.APPROVED
    row.reviewed_fingerprint = row.fingerprint
    row.save()
    TopUpPack.objects.create(
        key="pack", name="Pack", feature=Feature.objects.get(key="messages"), amount=30, price=row
    )
    user = UserFactory()
    kernia_billing.check(user, "messages")
    started = start_checkout(
        user,
        price=price["id"],
        quantity=2,
        success_url="http://testserver/ok",
        cancel_url="http://testserver/no",
    )
    fake_stripe.complete_checkout_session(started.session_id)

    def work(index: int) -> Any:
        if index % 2:
            return fulfil_session_id(started.session_id)  # the webhook's step
        return complete_checkout(started.session_id)  # the return page

    results = run_concurrently(THREADS, work)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    grants = list(Grant.objects.filter(source=GrantSource.TOPUP))
    assert len(grants) == 1 and grants[0].amount == 60
    assert kernia_billing.check(user, "messages").balance == 80
    assert audit_ledger() == []
