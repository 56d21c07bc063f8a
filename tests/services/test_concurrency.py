"""Exactness under concurrency: real threads, real transactions, real row locks.

Runs on PostgreSQL, and on SQLite when the test database is a file
(``SQLITE_TEST_NAME``), where writes queue on the IMMEDIATE write lock.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

import kernia_billing
from kernia_billing.exceptions import BillingError, InsufficientBalance
from kernia_billing.models import Entitlement, ResetPeriod, UsageEvent
from kernia_billing.periods import add_months
from kernia_billing.services.customers import get_or_create_customer
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.threads import run_concurrently, skip_unless_shared_database

# Each case runs 64 threads: the reset-boundary race takes every date, the others (no
# period arithmetic of their own) today and the leap day.
WITHIN_A_PERIOD = pytest.mark.clock_matrix("today", "feb29-leap")

THREADS = 64


@pytest.fixture(autouse=True)
def _needs_shared_database(transactional_db):
    skip_unless_shared_database()


@pytest.fixture
def owner():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="starter", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=50, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "messages")  # creates the customer and its entitlement
    return user


def assert_only_refusals(results: list[Any]) -> None:
    unexpected = [
        r for r in results if isinstance(r, Exception) and not isinstance(r, BillingError)
    ]
    assert not unexpected, unexpected[:3]


@WITHIN_A_PERIOD
def test_concurrent_tracks_never_overspend(owner):
    results = run_concurrently(THREADS, lambda i: kernia_billing.track(owner, "messages", 1))
    assert_only_refusals(results)
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert (len(accepted), len(refused)) == (50, THREADS - 50)
    entitlement = Entitlement.objects.get()
    assert (entitlement.usage, entitlement.balance) == (50, 0)
    assert UsageEvent.objects.count() == 50
    # Every accepted track saw a distinct balance: no update was lost.
    assert sorted(r.balance for r in accepted) == list(range(50))


@pytest.mark.clock_matrix
def test_concurrent_tracks_across_a_reset_boundary(owner):
    customer = get_or_create_customer(owner)
    boundary = timezone.now().replace(microsecond=0) + timedelta(days=1)
    # The period that ends at ``boundary`` starts one calendar month earlier: a fixed
    # 31 days would put the anchor off the monthly series whenever that month is shorter.
    period_start = add_months(boundary, -1)
    Entitlement.objects.filter(customer=customer).update(
        reset_anchor=period_start,
        period_start=period_start,
        next_reset_at=boundary,
    )
    before = boundary - timedelta(seconds=1)
    after = boundary + timedelta(seconds=1)

    def work(i: int) -> Any:
        return kernia_billing.track(owner, "messages", 1, now=before if i % 2 else after)

    results = run_concurrently(THREADS, work)
    assert_only_refusals(results)
    accepted = [r for r in results if not isinstance(r, Exception)]
    in_new_period = [r for r in accepted if r.created_at >= boundary]
    in_old_period = [r for r in accepted if r.created_at < boundary]
    # 32 tracks after the boundary all fit the fresh balance of 50; the reset ran once.
    assert len(in_new_period) == THREADS // 2
    assert len(in_old_period) <= 50
    entitlement = Entitlement.objects.get(customer=customer)
    assert entitlement.period_start == boundary
    assert entitlement.usage == THREADS // 2
    since = UsageEvent.objects.filter(customer=customer, created_at__gte=entitlement.period_start)
    assert since.aggregate(total=Sum("amount"))["total"] == entitlement.usage
    assert UsageEvent.objects.count() == len(accepted)


@WITHIN_A_PERIOD
def test_concurrent_idempotent_replays_count_once(owner):
    results = run_concurrently(
        32, lambda i: kernia_billing.track(owner, "messages", 3, idempotency_key="order-42")
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert len({r.event_id for r in results}) == 1
    assert sum(1 for r in results if not r.replayed) == 1
    assert UsageEvent.objects.count() == 1
    assert Entitlement.objects.get().usage == 3


@WITHIN_A_PERIOD
def test_concurrent_first_use_creates_one_customer():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="starter", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=50)
    user = UserFactory()
    results = run_concurrently(16, lambda i: kernia_billing.track(user, "messages", 1))
    assert not [r for r in results if isinstance(r, Exception)]
    assert Entitlement.objects.get().usage == 16


@WITHIN_A_PERIOD
def test_concurrent_batches_and_single_tracks_stay_exact(owner):
    from kernia_billing import TrackRequest

    def work(i: int) -> list[bool]:
        if i % 2:
            batch = kernia_billing.track_batch(owner, [TrackRequest("messages", 1)] * 6)
            return [item.ok for item in batch]
        try:
            kernia_billing.track(owner, "messages", 1)
        except InsufficientBalance:
            return [False]
        return [True]

    results = run_concurrently(16, work)  # 8 single tracks + 8 batches of 6 = 56 > 50
    assert not [r for r in results if isinstance(r, Exception)]
    outcomes = [ok for r in results for ok in r]
    assert (outcomes.count(True), outcomes.count(False)) == (50, 6)
    entitlement = Entitlement.objects.get()
    assert entitlement.usage == 50
    assert UsageEvent.objects.aggregate(total=Sum("amount"))["total"] == 50


@WITHIN_A_PERIOD
def test_concurrent_keyed_batches_on_one_row_count_each_key_once(owner):
    """The same fitting batch from 8 threads at once: the first to commit counts it, the
    others' one statement meets the used keys (unique index) and replays them."""
    from kernia_billing import TrackRequest

    requests = [TrackRequest("messages", 2, idempotency_key=f"job-{n}") for n in range(20)]
    results = run_concurrently(8, lambda i: kernia_billing.track_batch(owner, requests))
    assert not [r for r in results if isinstance(r, Exception)]
    answers = [item for batch in results for item in batch]
    assert all(item.ok for item in answers)
    assert sum(not item.result.replayed for item in answers) == 20
    ids = {item.result.event_id for item in answers}
    assert len(ids) == 20 and UsageEvent.objects.count() == 20
    assert Entitlement.objects.get().usage == 40
