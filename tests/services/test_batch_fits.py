"""Batch track's fitting path (decided before the lock) answers as the general decision.

Each example runs the same batch twice on the same state, rolled back in between: once
as it is, once with the fitting path switched off, and compares answers, ledger rows and
usage. Batches that fit, that run out, that go below zero, with grants and with due
resets all pass through both.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.models import (
    Entitlement,
    Feature,
    FeatureKind,
    OverageReport,
    ResetPeriod,
    UsageEvent,
    UsageRollup,
)
from kernia_billing.services.usage import batch as batch_service
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def seats(free_plan):
    feature = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    PlanFeatureFactory(plan=free_plan, feature=feature, included=5, reset_period=ResetPeriod.NONE)
    return feature


def _outcome(results: list[Any]) -> tuple[Any, ...]:
    rows = list(UsageEvent.objects.order_by("pk"))
    position = {row.pk: n for n, row in enumerate(rows)}
    answers = [
        replace(r, result=replace(r.result, event_id=position[r.result.event_id]))
        if r.result is not None
        else r
        for r in results
    ]
    ledger = [
        (
            r.feature_id,
            r.amount,
            r.idempotency_key,
            bytes(r.request_fingerprint),
            r.properties,
            r.created_at,
            r.balance_after,
            r.usage_after,
            r.from_grants,
            r.draws,
        )
        for r in rows
    ]
    usage = sorted(Entitlement.objects.values_list("feature__key", "usage", "period_start"))
    rollups = sorted(UsageRollup.objects.values_list("feature__key", "day", "amount", "events"))
    outbox = sorted(OverageReport.objects.values_list("feature__key", "value"))
    return answers, ledger, usage, rollups, outbox


def _both_ways(user, requests, monkeypatch, now=None) -> list[tuple[Any, ...]]:
    now = now or timezone.now()  # one moment for both
    outcomes = []
    for fitting in (True, False):
        with transaction.atomic():
            with monkeypatch.context() as patch:
                if not fitting:
                    patch.setattr(batch_service.FittingBatch, "of", classmethod(lambda c, p: None))
                results = kernia_billing.track_batch(user, requests, now=now)
            outcomes.append(_outcome(results))
            transaction.set_rollback(True)
    return outcomes


def test_a_batch_that_fits_is_decided_before_the_lock(user, free_plan, monkeypatch):
    kernia_billing.track(user, "messages", 10)
    requests = [TrackRequest("messages", 3, idempotency_key=f"k{i}") for i in range(20)]
    fitted, general = _both_ways(user, requests, monkeypatch)
    assert fitted == general
    answers = fitted[0]
    assert [a.result.usage for a in answers] == list(range(13, 71, 3))
    assert [a.result.balance for a in answers] == list(range(87, 29, -3))


def test_the_fitting_path_skips_the_grants_lock_and_the_per_event_decision(user, free_plan):
    kernia_billing.track(user, "messages", 1)
    requests = [TrackRequest("messages", 1, idempotency_key=f"k{i}") for i in range(5)]
    with CaptureQueriesContext(connection) as ctx:
        results = kernia_billing.track_batch(user, requests)
    assert all(r.ok for r in results)
    grants = [q["sql"] for q in ctx.captured_queries if "kernia_billing_grant" in q["sql"]]
    assert grants == []  # no live grant: nothing to lock
    assert Entitlement.objects.get().usage == 6


def test_a_grant_sends_the_batch_to_the_general_decision(user, free_plan, monkeypatch):
    kernia_billing.track(user, "messages", 95)
    kernia_billing.grant(user, "messages", 10, reason="goodwill")
    requests = [TrackRequest("messages", 4) for _ in range(3)]
    fitted, general = _both_ways(user, requests, monkeypatch)
    assert fitted == general
    ledger = fitted[1]
    assert [row[8] for row in ledger[1:]] == [0, 3, 4]  # the plan's 5 first, then the grant


def test_a_due_reset_is_applied_before_the_fitting_decision(user, free_plan, monkeypatch):
    kernia_billing.track(user, "messages", 90)
    later = Entitlement.objects.get().next_reset_at + timedelta(minutes=1)
    requests = [TrackRequest("messages", 30) for _ in range(3)]
    fitted, general = _both_ways(user, requests, monkeypatch, now=later)
    assert fitted == general
    answers = fitted[0]
    assert [a.result.usage for a in answers] == [30, 60, 90]


def test_seats_that_would_go_below_zero_leave_the_batch_to_the_general_decision(
    user, seats, monkeypatch
):
    kernia_billing.track(user, "seats", 2)
    requests = [TrackRequest("seats", n) for n in (1, -4, 1)]  # 3, -1 (refused), 4
    fitted, general = _both_ways(user, requests, monkeypatch)
    assert fitted == general
    answers = fitted[0]
    assert [a.ok for a in answers] == [True, False, True]
    assert answers[1].error_code == "usage_below_zero"
    assert [a.result.usage for a in answers if a.ok] == [3, 4]


amounts = st.lists(
    st.tuples(st.sampled_from(["messages", "seats"]), st.integers(-3, 40), st.booleans()),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=st.integers(0, 100), events=amounts)
def test_fitting_and_general_decisions_answer_alike(user, seats, monkeypatch, before, events):
    """Distinct keys or none (a repeated key is the general decision's), both features,
    batches that fit, run out, or take seats below zero."""
    requests = [
        TrackRequest(
            feature, amount if feature == "seats" else abs(amount) or 1, idempotency_key=key
        )
        for n, (feature, amount, keyed) in enumerate(events)
        for key in [f"key-{n}" if keyed else None]
    ]
    with transaction.atomic():
        kernia_billing.check(user, "seats")  # both entitlements made once, before both runs
        kernia_billing.check(user, "messages")
        if before:
            kernia_billing.track(user, "messages", before)
        fitted, general = _both_ways(user, requests, monkeypatch)
        transaction.set_rollback(True)
    assert fitted == general


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")
def test_a_fitting_batch_of_one_entitlement_is_one_statement(user, free_plan):
    """Lock, deduction, ledger rows and rollup together: the row is held for that
    statement and the COMMIT alone (what a hot customer's batches queue for)."""
    kernia_billing.track(user, "messages", 1)
    requests = [TrackRequest("messages", 2, idempotency_key=f"k{i}") for i in range(10)]
    with CaptureQueriesContext(connection) as ctx:
        results = kernia_billing.track_batch(user, requests)
    assert [r.result.usage for r in results] == list(range(3, 22, 2))
    writes = [
        q["sql"]
        for q in ctx.captured_queries
        if "kernia_billing_entitlement" in q["sql"] and not q["sql"].startswith("SELECT")
    ]
    assert len(writes) == 1 and "d AS (UPDATE" in writes[0]
    assert not [q for q in ctx.captured_queries if "FOR UPDATE" in q["sql"]]


def test_a_feature_of_a_credit_pool_that_its_own_entitlement_covers(user, monkeypatch):
    """Its own entitlement decides first (the pool is locked with it, not drawn from)."""
    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    FeatureFactory(key="images", credit_pool=credits, credit_cost=20)
    plan = PlanFactory(key="ai", is_default=True)
    PlanFeatureFactory(plan=plan, feature=credits, included=100, reset_period=ResetPeriod.MONTH)
    images = Feature.objects.get(key="images")
    PlanFeatureFactory(plan=plan, feature=images, included=3, reset_period=ResetPeriod.MONTH)
    kernia_billing.check(user, "credits")
    kernia_billing.check(user, "images")
    for batch in ([1, 1], [1, 1, 1, 1]):  # fits its own 3; runs past them into the pool
        requests = [TrackRequest("images", n) for n in batch]
        fitted, general = _both_ways(user, requests, monkeypatch)
        assert fitted == general
    assert [row[:2] for row in fitted[2]] == [("credits", 20), ("images", 3)]  # 3 own, 1 pool


def test_allow_overage_past_the_plan_takes_the_general_decision(user, monkeypatch):
    metered = FeatureFactory(key="api_calls")
    plan = PlanFactory(key="payg", is_default=True)
    PlanFeatureFactory(plan=plan, feature=metered, included=10, allow_overage=True)
    kernia_billing.check(user, "api_calls")
    requests = [TrackRequest("api_calls", 4) for _ in range(4)]  # 16: 6 past the plan
    fitted, general = _both_ways(user, requests, monkeypatch)
    assert fitted == general
    assert fitted[4] == [("api_calls", 2), ("api_calls", 4)]  # the outbox rows


def test_an_included_amount_at_the_end_of_bigint_does_not_overflow(user, monkeypatch):
    """The checks never add to ``included`` (a plan may set bigint's largest value)."""
    metered = FeatureFactory(key="tokens")
    plan = PlanFactory(key="huge", is_default=True)
    PlanFeatureFactory(plan=plan, feature=metered, included=2**63 - 1)
    kernia_billing.check(user, "tokens")
    Entitlement.objects.update(usage=3, grant_usage=3)  # a grant drawn, since spent
    requests = [TrackRequest("tokens", 10**9) for _ in range(5)]
    fitted, general = _both_ways(user, requests, monkeypatch)
    assert fitted == general
    assert [a.result.balance for a in fitted[0]] == [2**63 - 1 - n * 10**9 for n in range(1, 6)]
