"""Credit pools: features drawing units x cost from one pool of credits."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import FeatureKind, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.types import TrackRequest
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    FeatureFactory(key="messages", credit_pool=credits, credit_cost=1)
    FeatureFactory(key="images", credit_pool=credits, credit_cost=20)
    plan = PlanFactory(key="ai", is_default=True)
    PlanFeatureFactory(plan=plan, feature=credits, included=100, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "credits")
    return user


def test_check_answers_in_units_and_credits(owner):
    result = kernia_billing.check(owner, "images", 2)
    assert (result.allowed, result.balance, result.credit_balance, result.credit_cost) == (
        True,
        5,
        100,
        20,
    )
    assert not kernia_billing.check(owner, "images", 6).allowed


def test_tracks_draw_cost_times_units_from_the_pool_and_record_the_feature(owner):
    images = kernia_billing.track(owner, "images", 2)
    assert (images.feature, images.amount, images.balance, images.credit_balance) == (
        "images",
        2,
        3,
        60,
    )
    kernia_billing.track(owner, "messages", 60)
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(owner, "images", 1)
    event = UsageEvent.objects.filter(used_feature__key="images").get()
    assert (event.feature.key, event.amount, event.units) == ("credits", 40, 2)
    assert kernia_billing.check(owner, "credits").balance == 0
    assert audit_ledger() == []


def test_a_top_up_of_credits_serves_every_feature_of_the_pool(owner):
    kernia_billing.grant(owner, "credits", 1000, source="topup")
    assert kernia_billing.check(owner, "images").balance == 55
    kernia_billing.track(owner, "images", 10)
    assert kernia_billing.check(owner, "messages").balance == 900
    assert audit_ledger() == []


def test_own_entitlement_is_used_before_the_pool(owner):
    from kernia_billing.models import Feature, Plan

    PlanFeatureFactory(
        plan=Plan.objects.get(key="ai"),
        feature=Feature.objects.get(key="images"),
        included=1,
        reset_period=ResetPeriod.MONTH,
    )
    from kernia_billing.services.customers import get_or_create_customer
    from kernia_billing.services.entitlements.sync import sync_entitlements

    sync_entitlements(get_or_create_customer(owner))
    first = kernia_billing.track(owner, "images", 1)
    assert first.credit_cost is None  # its own grant
    second = kernia_billing.track(owner, "images", 1)
    assert (second.credit_cost, second.credit_balance) == (20, 80)
    assert audit_ledger() == []


def test_idempotent_pool_track_replays(owner):
    first = kernia_billing.track(owner, "images", 1, idempotency_key="img-1")
    again = kernia_billing.track(owner, "images", 1, idempotency_key="img-1")
    assert again.replayed and again.event_id == first.event_id
    assert kernia_billing.check(owner, "credits").balance == 80


def test_pool_check_is_three_queries_at_most(owner):
    kernia_billing.check(owner, "images")
    with CaptureQueriesContext(connection) as queries:
        kernia_billing.check(owner, "images")
    assert len(queries) <= 3


@pytest.mark.django_db
def test_a_replay_of_a_track_the_pool_paid_answers_in_units_as_the_first():
    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    images = FeatureFactory(key="images", credit_pool=credits, credit_cost=20)
    plan = PlanFactory(key="ai", is_default=True)
    PlanFeatureFactory(plan=plan, feature=credits, included=100, reset_period=ResetPeriod.MONTH)
    PlanFeatureFactory(plan=plan, feature=images, included=1, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    first = kernia_billing.track(user, "images", 2, idempotency_key="k")  # own has 1: pool

    again = kernia_billing.track(user, "images", 2, idempotency_key="k")
    batch = kernia_billing.track_batch(user, [TrackRequest("images", 2, idempotency_key="k")])

    assert (first.amount, first.balance) == (2, 3)
    assert (again.amount, again.balance, again.replayed) == (2, 3, True)
    assert (batch[0].result.amount, batch[0].result.balance) == (2, 3)
    assert UsageEvent.objects.count() == 1
