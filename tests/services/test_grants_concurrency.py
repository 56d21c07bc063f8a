"""Grants under real threads: exact draws across grants, exact expiry, idempotent grants."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import Entitlement, Grant, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.services.test_concurrency import assert_only_refusals
from tests.threads import run_concurrently, skip_unless_shared_database

THREADS = 64


@pytest.fixture(autouse=True)
def _needs_shared_database(transactional_db):
    skip_unless_shared_database()


@pytest.fixture
def owner():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=20, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "messages")
    return user


@pytest.mark.clock_matrix("today", "feb29-leap")
def test_64_tracks_against_plan_20_and_topup_30_accept_exactly_50(owner):
    topup = kernia_billing.grant(owner, "messages", 30, source="topup")
    results = run_concurrently(THREADS, lambda i: kernia_billing.track(owner, "messages", 1))
    assert_only_refusals(results)
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert (len(accepted), len(refused)) == (50, THREADS - 50)
    topup.refresh_from_db()
    assert (topup.consumed, topup.remaining) == (30, 0)
    entitlement = Entitlement.objects.get()
    assert (entitlement.usage - entitlement.grant_usage, entitlement.included) == (20, 20)
    assert sorted(r.balance for r in accepted) == list(range(50))
    assert UsageEvent.objects.count() == 50
    assert audit_ledger() == []


def test_concurrent_idempotent_grants_create_one(owner):
    results = run_concurrently(
        16, lambda i: kernia_billing.grant(owner, "messages", 30, idempotency_key="cs_test_1")
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert len({r.pk for r in results}) == 1
    assert Grant.objects.count() == 1
    assert kernia_billing.check(owner, "messages").balance == 50


def test_expiry_crossing_mid_run_spends_nothing_after_and_loses_nothing_before(owner):
    kernia_billing.track(owner, "messages", 20)  # the plan's grant is spent
    moment = timezone.now() + timedelta(milliseconds=600)
    promo = kernia_billing.grant(owner, "messages", THREADS, expires_at=moment)

    def work(i: int):
        time.sleep((i % 32) * 0.04)  # the run straddles the expiry
        started = timezone.now()
        try:
            return started, kernia_billing.track(owner, "messages", 1), timezone.now()
        except InsufficientBalance as refused:
            return started, refused, timezone.now()

    results = run_concurrently(THREADS, work)
    assert_only_refusals(results)
    for started, outcome, ended in results:
        if ended < moment:  # wholly before the expiry: served
            assert not isinstance(outcome, Exception)
        if started >= moment:  # wholly after it: nothing of the expired grant
            assert isinstance(outcome, InsufficientBalance)
        if not isinstance(outcome, Exception):
            assert outcome.created_at < moment
    accepted = sum(1 for _, outcome, _ in results if not isinstance(outcome, Exception))
    with time_machine.travel(moment + timedelta(seconds=1), tick=False):
        assert kernia_billing.check(owner, "messages").balance == 0
    promo.refresh_from_db()
    assert (promo.consumed, promo.expired, promo.remaining) == (accepted, THREADS - accepted, 0)
    assert audit_ledger() == []


def test_replays_of_an_idempotent_track_never_draw_twice(owner):
    kernia_billing.track(owner, "messages", 20)
    pack = kernia_billing.grant(owner, "messages", 30)
    results = run_concurrently(
        32, lambda i: kernia_billing.track(owner, "messages", 3, idempotency_key="job-9")
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert sum(1 for r in results if not r.replayed) == 1
    pack.refresh_from_db()
    assert pack.consumed == 3
    assert audit_ledger() == []


def test_two_features_drawing_from_one_pool_never_take_it_below_zero():
    from kernia_billing.models import FeatureKind

    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    FeatureFactory(key="messages", credit_pool=credits, credit_cost=1)
    FeatureFactory(key="images", credit_pool=credits, credit_cost=20)
    plan = PlanFactory(key="ai", is_default=True)
    PlanFeatureFactory(plan=plan, feature=credits, included=100, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.grant(user, "credits", 100, source="topup")

    def work(i: int):
        return kernia_billing.track(user, "images" if i % 2 else "messages", 1)

    results = run_concurrently(THREADS, work)
    assert_only_refusals(results)
    accepted = [r for r in results if not isinstance(r, Exception)]
    spent = sum(20 if r.feature == "images" else 1 for r in accepted)
    assert spent <= 200
    assert kernia_billing.check(user, "credits").balance == 200 - spent >= 0
    assert sum(e.amount for e in UsageEvent.objects.all()) == spent
    assert audit_ledger() == []
