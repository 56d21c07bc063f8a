"""The renewal storm (``reset_due``): every due reset, set-based, exactly once.

It applies the lazy reset's rule (a conditional ``UPDATE`` on the old boundary), so it
must agree with the lazy reset, reset nothing twice, and lose nothing beside concurrent
tracks, other storms and the renewal webhook.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import (
    BillingCustomer,
    Entitlement,
    FeatureKind,
    Grant,
    GrantSource,
    ResetPeriod,
    UsageEvent,
)
from kernia_billing.services.customers import apply_subscription, get_or_create_customer, set_plan
from kernia_billing.services.entitlements.renewals import reset_due
from kernia_billing.services.entitlements.resets import reset_for_new_period
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.locking import lock_customer
from kernia_billing.types import SubscriptionSnapshot
from tests.clock import CLOCK_DATES
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.threads import run_concurrently, skip_unless_shared_database


def _plan(*, rollover: bool = False) -> None:
    plan = PlanFactory(key="storm", is_default=True)
    for key, reset in (("messages", ResetPeriod.MONTH), ("exports", ResetPeriod.DAY)):
        feature = FeatureFactory(key=key, kind=FeatureKind.METERED)
        PlanFeatureFactory(plan=plan, feature=feature, included=100, reset_period=reset)
    if rollover:
        feature = FeatureFactory(key="images", kind=FeatureKind.METERED)
        PlanFeatureFactory(
            plan=plan,
            feature=feature,
            included=100,
            reset_period=ResetPeriod.MONTH,
            rollover_max=50,
            rollover_expires_after=1,
        )


def _periods(user: Any) -> dict[str, tuple[Any, Any, int]]:
    rows = Entitlement.objects.filter(customer__owner_id=str(user.pk)).select_related("feature")
    return {e.feature.key: (e.period_start, e.next_reset_at, e.usage) for e in rows}


@pytest.mark.django_db
@pytest.mark.parametrize("date", ["jan31", "feb29-leap", "dec31-23:59:59"])
def test_the_storm_resets_what_is_due_once_as_the_lazy_reset_would(date: str) -> None:
    start = CLOCK_DATES[date].moment
    assert start is not None
    _plan(rollover=True)
    with time_machine.travel(start, tick=False) as traveller:
        users = [UserFactory() for _ in range(4)]
        for user in users:
            for feature in ("messages", "exports", "images"):
                kernia_billing.track(user, feature, 7)
        traveller.shift(timedelta(days=40))
        late = UserFactory()  # joined after the boundary: nothing of it is due
        kernia_billing.track(late, "messages", 3)
        lazy, *stormed = users
        for feature in ("messages", "exports", "images"):
            kernia_billing.check(lazy, feature)  # the lazy reset of each feature
        events = UsageEvent.objects.count()

        assert reset_due(batch_size=2) == 3 * len(stormed)
        assert reset_due() == 0  # exactly once
        call_command("kernia_reset_due", verbosity=0)

        for user in stormed:
            assert _periods(user) == {
                key: (period_start, next_reset_at, 0)
                for key, (period_start, next_reset_at, _) in _periods(lazy).items()
            }
        assert _periods(late)["messages"][2] == 3
        assert UsageEvent.objects.count() == events
        # The rollover feature went through the lazy path: one rollover grant each.
        rollovers = Grant.objects.filter(source=GrantSource.ROLLOVER, feature__key="images")
        assert sorted(rollovers.values_list("customer__owner_id", "amount")) == sorted(
            (str(user.pk), 50) for user in users
        )
        for user in stormed:
            assert kernia_billing.check(user, "messages").balance == 100
        assert audit_ledger() == []


BOUNDARY = datetime(2030, 6, 10, 12, 0, tzinfo=UTC)
CUSTOMERS = 8
TRACKS_EACH = 2
STORMS = 3


@pytest.mark.postgres
def test_storms_beside_tracks_reset_each_entitlement_once_and_lose_no_track(
    transactional_db: None,
) -> None:
    skip_unless_shared_database()
    _plan()
    with time_machine.travel(BOUNDARY - timedelta(days=31), tick=False) as traveller:
        users = [UserFactory() for _ in range(CUSTOMERS)]
        for user in users:
            kernia_billing.track(user, "messages", 90)
            kernia_billing.track(user, "exports", 90)
        traveller.move_to(BOUNDARY + timedelta(hours=1))

        def work(index: int) -> Any:
            if index < STORMS:
                return ("storm", reset_due(batch_size=3))
            user = users[(index - STORMS) % CUSTOMERS]
            feature = ("messages", "exports")[index % 2]
            try:
                return ("tracked", kernia_billing.track(user, feature, 20).event_id)
            except InsufficientBalance:  # would mean a track counted in the ended period
                return ("refused", feature)

        results = run_concurrently(STORMS + CUSTOMERS * TRACKS_EACH, work)

    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert [r for r in results if r[0] == "refused"] == []
    assert sum(r[1] for r in results if r[0] == "storm") <= 2 * CUSTOMERS
    after = BOUNDARY + timedelta(hours=1)
    for entitlement in Entitlement.objects.all():
        assert entitlement.period_start <= after < entitlement.next_reset_at
        tracked = UsageEvent.objects.filter(
            customer_id=entitlement.customer_id,
            feature_id=entitlement.feature_id,
            created_at__gte=entitlement.period_start,
        ).count()
        assert entitlement.usage == 20 * tracked
    assert UsageEvent.objects.filter(created_at__gte=BOUNDARY).count() == CUSTOMERS * TRACKS_EACH
    assert audit_ledger() == []


@pytest.mark.postgres
def test_a_storm_beside_renewal_webhooks_resets_each_billing_entitlement_once(
    transactional_db: None,
) -> None:
    skip_unless_shared_database()
    plan = PlanFactory(key="billed")
    feature = FeatureFactory(key="messages", kind=FeatureKind.METERED)
    PlanFeatureFactory(plan=plan, feature=feature, included=100, reset_period=ResetPeriod.BILLING)
    started = BOUNDARY - timedelta(days=31)  # 2030-05-10: one calendar month before
    ended = BOUNDARY + timedelta(days=30)
    with time_machine.travel(started + timedelta(hours=1), tick=False) as traveller:
        users = [UserFactory() for _ in range(CUSTOMERS)]
        for user in users:
            customer = get_or_create_customer(user)
            BillingCustomer.objects.filter(pk=customer.pk).update(
                current_period_start=started, current_period_end=BOUNDARY
            )
            customer.refresh_from_db()
            set_plan(customer, plan)
            kernia_billing.track(user, "messages", 90)
        traveller.move_to(BOUNDARY + timedelta(hours=1))

        def renewal(user: Any) -> int:
            # What the webhook's apply_subscription does for a new period.
            with transaction.atomic():
                locked = lock_customer(get_or_create_customer(user).pk)
                locked.current_period_start, locked.current_period_end = BOUNDARY, ended
                locked.save(update_fields=["current_period_start", "current_period_end"])
                return reset_for_new_period(locked, BOUNDARY)

        def work(index: int) -> Any:
            if index < 2:
                return ("storm", reset_due(batch_size=2))
            user = users[(index - 2) % CUSTOMERS]
            if index < 2 + CUSTOMERS:
                return ("webhook", renewal(user))
            return ("tracked", kernia_billing.track(user, "messages", 20).event_id)

        results = run_concurrently(2 + 2 * CUSTOMERS, work)

    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    resets = sum(r[1] for r in results if r[0] in ("storm", "webhook"))
    assert resets <= CUSTOMERS  # the track's own lazy reset may have come first
    for entitlement in Entitlement.objects.all():
        assert (entitlement.period_start, entitlement.next_reset_at) == (BOUNDARY, ended)
        assert entitlement.usage == 20
    assert audit_ledger() == []


def _two_resets_plan() -> None:
    """A month feature created first (the lower entitlement id), then a billing one."""
    plan = PlanFactory(key="mixed", is_default=True)
    for key, reset in (("api", ResetPeriod.MONTH), ("messages", ResetPeriod.BILLING)):
        feature = FeatureFactory(key=key, kind=FeatureKind.METERED)
        PlanFeatureFactory(plan=plan, feature=feature, included=100, reset_period=reset)


def _renewed(start: datetime, end: datetime) -> SubscriptionSnapshot:
    return SubscriptionSnapshot(
        id="sub_storm",
        stripe_customer_id="",
        status="active",
        price_ids=(),
        current_period_start=start,
        current_period_end=end,
        interval="month",
    )


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_renewal_locks_all_the_customers_entitlements_before_it_writes_any() -> None:
    """Taken piecemeal (billing rows to reset, then every row to re-anchor), a lower id
    locked after a higher one: a deadlock with a storm's ascending batch."""
    _two_resets_plan()
    started, ended = BOUNDARY - timedelta(days=31), BOUNDARY + timedelta(days=30)
    with time_machine.travel(started + timedelta(hours=1), tick=False) as traveller:
        user = UserFactory()
        customer = get_or_create_customer(user)
        apply_subscription(customer, _renewed(started, BOUNDARY), state_at=started)
        traveller.move_to(BOUNDARY + timedelta(minutes=1))
        with CaptureQueriesContext(connection) as captured:
            assert apply_subscription(customer, _renewed(BOUNDARY, ended), state_at=BOUNDARY)
    table = Entitlement._meta.db_table
    touching = [
        q["sql"]
        for q in captured.captured_queries
        if table in q["sql"] and ("FOR UPDATE" in q["sql"] or q["sql"].startswith("UPDATE"))
    ]
    first = touching[0]
    assert "ORDER BY id FOR UPDATE" in first and "customer_id =" in first, first
    assert "reset_period" not in first  # all of them, not the billing ones
    assert _periods(user)["api"][0] == _periods(user)["messages"][0] == BOUNDARY


@pytest.mark.postgres
def test_storms_beside_renewal_webhooks_of_customers_with_two_resets_never_deadlock(
    transactional_db: None,
) -> None:
    skip_unless_shared_database()
    _two_resets_plan()
    started, ended = BOUNDARY - timedelta(days=31), BOUNDARY + timedelta(days=30)
    with time_machine.travel(started + timedelta(hours=1), tick=False) as traveller:
        users = [UserFactory() for _ in range(CUSTOMERS)]
        for user in users:
            customer = get_or_create_customer(user)
            apply_subscription(customer, _renewed(started, BOUNDARY), state_at=started)
            kernia_billing.track(user, "api", 10)
            kernia_billing.track(user, "messages", 10)
        traveller.move_to(BOUNDARY + timedelta(minutes=1))
        deadlocks = _deadlocks()

        def work(index: int) -> Any:
            if index < 3:
                return reset_due(batch_size=2)
            customer = get_or_create_customer(users[index - 3])
            return apply_subscription(customer, _renewed(BOUNDARY, ended), state_at=BOUNDARY)

        results = run_concurrently(3 + CUSTOMERS, work)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert _deadlocks() == deadlocks  # none detected, not only none left unretried
    for user in users:
        periods = _periods(user)
        assert periods["api"][0] == periods["messages"][0] == BOUNDARY
        assert periods["api"][2] == periods["messages"][2] == 0
    assert audit_ledger() == []


def _deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])
