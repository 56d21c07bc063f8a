"""check / track through the Python API, on whichever database the suite runs on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum

import kernia_billing
from kernia_billing import signals
from kernia_billing.exceptions import (
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NoPlan,
    NotIncluded,
    NotTrackable,
    UnknownFeature,
    UsageBelowZero,
)
from kernia_billing.models import BillingCustomer, Entitlement, FeatureKind, ResetPeriod, UsageEvent
from kernia_billing.services.customers import apply_subscription, get_or_create_customer
from kernia_billing.types import SubscriptionSnapshot
from tests.factories import (
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    PlanPriceFactory,
    UserFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.clock_matrix]


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ledger_usage(customer: BillingCustomer, feature: str, since: datetime | None) -> int:
    events = UsageEvent.objects.filter(customer=customer, feature__key=feature)
    if since is not None:
        events = events.filter(created_at__gte=since)
    return events.aggregate(total=Sum("amount"))["total"] or 0


def test_seed_feature_check_and_track(user, free_plan):
    result = kernia_billing.check(user, "messages")
    assert result.allowed is True
    assert (result.balance, result.included, result.usage) == (100, 100, 0)
    assert result.plan == "free"
    assert result.reset_period == "month"
    assert result.next_reset_at is not None

    tracked = kernia_billing.track(user, "messages", 30, properties={"channel": "email"})
    assert (tracked.balance, tracked.usage, tracked.replayed) == (70, 30, False)
    event = UsageEvent.objects.get(pk=tracked.event_id)
    assert (event.amount, event.balance_after, event.properties) == (30, 70, {"channel": "email"})

    assert kernia_billing.check(user, "messages", required=70).allowed is True
    denied = kernia_billing.check(user, "messages", required=71)
    assert (denied.allowed, denied.reason, denied.balance) == (False, "insufficient_balance", 70)


def test_check_never_writes_usage(user, free_plan):
    for _ in range(3):
        kernia_billing.check(user, "messages", required=5)
    assert UsageEvent.objects.count() == 0
    assert Entitlement.objects.get().usage == 0


def test_track_refused_without_overage_records_nothing(user, free_plan):
    kernia_billing.track(user, "messages", 100)
    with pytest.raises(InsufficientBalance) as excinfo:
        kernia_billing.track(user, "messages", 1)
    assert excinfo.value.balance == 0
    assert UsageEvent.objects.count() == 1
    assert Entitlement.objects.get().usage == 100


def test_overage_lets_balance_go_negative(user, messages):
    plan = PlanFactory(key="payg", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=10, allow_overage=True)
    result = kernia_billing.track(user, "messages", 25)
    assert (result.balance, result.usage) == (-15, 25)
    check = kernia_billing.check(user, "messages")
    assert check.allowed is True and check.allow_overage is True


def test_unknown_feature_not_included_and_no_plan(user, free_plan):
    with pytest.raises(UnknownFeature):
        kernia_billing.check(user, "nope")
    FeatureFactory(key="sso", kind=FeatureKind.BOOLEAN)
    result = kernia_billing.check(user, "sso")
    assert (result.allowed, result.reason, result.plan) == (False, "not_included", "free")
    with pytest.raises(NotIncluded):
        kernia_billing.track(user, "sso")


def test_no_plan_without_default(db, messages):
    user = UserFactory()
    result = kernia_billing.check(user, "messages")
    assert (result.allowed, result.reason, result.plan) == (False, "no_plan", None)
    with pytest.raises(NoPlan):
        kernia_billing.track(user, "messages")


def test_boolean_feature(user, free_plan):
    sso = FeatureFactory(key="sso", kind=FeatureKind.BOOLEAN)
    PlanFeatureFactory(plan=free_plan, feature=sso, included=0, reset_period=ResetPeriod.NONE)
    result = kernia_billing.check(user, "sso")
    assert result.allowed is True and result.balance is None
    with pytest.raises(NotTrackable):
        kernia_billing.track(user, "sso")


@pytest.mark.parametrize("amount", [0, -1, 1.5, "3", True, None, 10**12])
def test_bad_metered_amounts_are_refused(user, free_plan, amount):
    with pytest.raises(InvalidRequest):
        kernia_billing.track(user, "messages", amount)
    assert UsageEvent.objects.count() == 0


def test_seats_go_up_and_down_but_never_below_zero(user, free_plan):
    seats = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    PlanFeatureFactory(plan=free_plan, feature=seats, included=3, reset_period=ResetPeriod.NONE)
    assert kernia_billing.track(user, "seats", 2).balance == 1
    assert kernia_billing.track(user, "seats", -1).balance == 2
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(user, "seats", 3)
    with pytest.raises(UsageBelowZero):
        kernia_billing.track(user, "seats", -2)
    entitlement = Entitlement.objects.get(feature=seats)
    assert entitlement.usage == 1 == ledger_usage(entitlement.customer, "seats", None)


def test_idempotent_replay_and_conflict(user, free_plan):
    first = kernia_billing.track(user, "messages", 5, idempotency_key="req-1")
    again = kernia_billing.track(user, "messages", 5, idempotency_key="req-1")
    assert again.replayed is True
    assert (again.event_id, again.balance, again.usage) == (first.event_id, 95, 5)
    assert UsageEvent.objects.count() == 1
    with pytest.raises(IdempotencyConflict):
        kernia_billing.track(user, "messages", 6, idempotency_key="req-1")
    # The key is per customer: another customer may use the same key.
    other = UserFactory()
    assert kernia_billing.track(other, "messages", 5, idempotency_key="req-1").replayed is False


def test_lazy_monthly_reset_anchored_and_usage_after_boundary_counts_in_new_period(user, free_plan):
    customer = get_or_create_customer(user)
    BillingCustomer.objects.filter(pk=customer.pk).update(created_at=at(2025, 1, 31, 10))
    customer.refresh_from_db()
    Entitlement.objects.filter(customer=customer).update(
        reset_anchor=at(2025, 1, 31, 10),
        period_start=at(2025, 1, 31, 10),
        next_reset_at=at(2025, 2, 28, 10),
    )
    kernia_billing.track(user, "messages", 60, now=at(2025, 2, 20))
    assert kernia_billing.check(user, "messages", now=at(2025, 2, 28, 9)).balance == 40

    # First read after the boundary resets, once; the clamp returns to the 31st.
    after = kernia_billing.check(user, "messages", now=at(2025, 3, 1))
    assert (after.balance, after.usage) == (100, 0)
    assert after.next_reset_at == at(2025, 3, 31, 10)
    tracked = kernia_billing.track(user, "messages", 7, now=at(2025, 3, 2))
    assert tracked.usage == 7
    entitlement = Entitlement.objects.get(customer=customer)
    assert entitlement.period_start == at(2025, 2, 28, 10)
    assert entitlement.usage == ledger_usage(customer, "messages", entitlement.period_start)


def test_track_after_boundary_resets_first(user, free_plan):
    customer = get_or_create_customer(user)
    Entitlement.objects.filter(customer=customer).update(
        reset_anchor=at(2025, 5, 1), period_start=at(2025, 5, 1), next_reset_at=at(2025, 6, 1)
    )
    kernia_billing.track(user, "messages", 100, now=at(2025, 5, 30))
    result = kernia_billing.track(user, "messages", 10, now=at(2025, 6, 1, 0, 0, 1))
    assert (result.usage, result.balance) == (10, 90)


def _subscribe(customer, plan_price, *, status="active", start=None, end=None, quantity=None):
    start = start or at(2025, 1, 1)
    end = end or at(2025, 2, 1)
    snapshot = SubscriptionSnapshot(
        id="sub_test",
        stripe_customer_id="cus_test",
        status=status,
        price_ids=(plan_price.price.stripe_id,),
        current_period_start=start,
        current_period_end=end,
        interval="month",
        quantity=quantity,
    )
    apply_subscription(customer, snapshot, state_at=start)
    customer.refresh_from_db()
    return snapshot


def test_upgrade_keeps_usage_and_downgrade_can_go_negative(user, free_plan, messages):
    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000, reset_period=ResetPeriod.BILLING)
    pro_price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    kernia_billing.track(user, "messages", 80)

    _subscribe(customer, pro_price, start=at(2025, 1, 1), end=at(2099, 1, 1))
    assert customer.plan == pro
    result = kernia_billing.check(user, "messages")
    assert (result.included, result.usage, result.balance, result.plan) == (1000, 80, 920, "pro")

    kernia_billing.track(user, "messages", 500)
    apply_subscription(customer, None, state_at=at(2025, 1, 2))
    downgraded = kernia_billing.check(user, "messages")
    assert (downgraded.plan, downgraded.balance, downgraded.allowed) == ("free", -480, False)
    assert downgraded.reason == "insufficient_balance"


def test_non_entitling_status_falls_back_to_default_and_grace_setting(
    user, free_plan, messages, settings
):
    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000)
    price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    _subscribe(customer, price, status="past_due")
    assert customer.plan == pro  # grace on by default
    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, "PAST_DUE_GRACE": False}
    apply_subscription(
        customer,
        SubscriptionSnapshot(
            id="sub_test",
            stripe_customer_id="cus_test",
            status="past_due",
            price_ids=(price.price.stripe_id,),
            current_period_start=at(2025, 1, 1),
            current_period_end=at(2025, 2, 1),
        ),
        state_at=at(2025, 1, 1, 1),
    )
    customer.refresh_from_db()
    assert customer.plan == free_plan
    for status in ("unpaid", "incomplete", "paused", "canceled"):
        _subscribe(customer, price, status=status)
        assert customer.plan == free_plan, status


def test_stale_state_does_not_roll_back(user, free_plan, messages):
    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000)
    price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    apply_subscription(customer, None, state_at=at(2025, 3, 1))
    _subscribe(customer, price, start=at(2025, 1, 1))  # older than what was applied
    assert customer.plan == free_plan


def test_new_billing_period_resets_once_and_keeps_usage_tracked_after_boundary(
    user, free_plan, messages
):
    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000, reset_period=ResetPeriod.BILLING)
    price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    boundary = start + timedelta(days=30)
    _subscribe(customer, price, start=start, end=boundary)
    kernia_billing.track(user, "messages", 300, now=start + timedelta(days=19))
    # Usage after the boundary, before the renewal webhook: a lazy reset happens first.
    kernia_billing.track(user, "messages", 5, now=boundary + timedelta(minutes=5))
    snapshot = _subscribe(customer, price, start=boundary, end=boundary + timedelta(days=30))
    entitlement = Entitlement.objects.get(customer=customer, feature=messages)
    assert (entitlement.usage, entitlement.period_start) == (5, boundary)
    # The same webhook delivered again changes nothing.
    apply_subscription(customer, snapshot, state_at=boundary)
    entitlement.refresh_from_db()
    assert entitlement.usage == 5 == ledger_usage(customer, "messages", boundary)


def test_renewal_webhook_before_any_lazy_reset_recounts_from_ledger(user, free_plan, messages):
    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000, reset_period=ResetPeriod.BILLING)
    price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    boundary = start + timedelta(days=30)
    _subscribe(customer, price, start=start, end=boundary)
    kernia_billing.track(user, "messages", 300, now=start + timedelta(days=1))
    _subscribe(customer, price, start=boundary, end=boundary + timedelta(days=30))
    result = kernia_billing.check(user, "messages", now=boundary + timedelta(hours=1))
    assert (result.usage, result.balance) == (0, 1000)


def test_backdated_track_before_period_is_refused(user, free_plan):
    kernia_billing.check(user, "messages")
    with pytest.raises(InvalidRequest):
        kernia_billing.track(user, "messages", 1, now=at(2001, 1, 1))
    assert UsageEvent.objects.count() == 0


def test_seats_follow_subscription_quantity(user, free_plan):
    seats = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    team = PlanFactory(key="team")
    PlanFeatureFactory(
        plan=team,
        feature=seats,
        included=1,
        included_from_quantity=True,
        reset_period=ResetPeriod.NONE,
    )
    price = PlanPriceFactory(plan=team)
    customer = get_or_create_customer(user)
    _subscribe(customer, price, quantity=5)
    assert kernia_billing.check(user, "seats", required=5).allowed is True
    assert kernia_billing.check(user, "seats", required=6).allowed is False


def test_signals_fire_after_commit(user, free_plan, django_capture_on_commit_callbacks):
    received: list[tuple[str, dict]] = []

    def on_tracked(sender, **kwargs):
        received.append(("tracked", kwargs))

    def on_limit(sender, **kwargs):
        received.append(("limit", kwargs))

    signals.usage_tracked.connect(on_tracked)
    signals.limit_reached.connect(on_limit)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            kernia_billing.track(user, "messages", 60)
        with django_capture_on_commit_callbacks(execute=True):
            kernia_billing.track(user, "messages", 40)
    finally:
        signals.usage_tracked.disconnect(on_tracked)
        signals.limit_reached.disconnect(on_limit)
    kinds = [kind for kind, _ in received]
    assert kinds == ["tracked", "tracked", "limit"]
    assert received[-1][1]["balance"] == 0


def test_customer_state(user, free_plan):
    kernia_billing.track(user, "messages", 3)
    state = kernia_billing.customer_state(user)
    assert state.plan == "free" and state.subscription is None
    assert state.portal_available is False
    [messages] = state.entitlements
    assert (messages.feature, messages.usage, messages.balance) == ("messages", 3, 97)


def test_plan_edit_reaches_existing_customers(user, free_plan, messages):
    kernia_billing.check(user, "messages")
    projects = FeatureFactory(key="projects", kind=FeatureKind.QUANTITY)
    PlanFeatureFactory(plan=free_plan, feature=projects, included=2, reset_period=ResetPeriod.NONE)
    assert kernia_billing.check(user, "projects", required=2).allowed is True


def test_period_start_moves_past_stale_clock(user, free_plan):
    """A track whose clock predates the current period is retried with a fresh clock."""
    customer = get_or_create_customer(user)
    now = datetime.now(UTC)
    Entitlement.objects.filter(customer=customer).update(
        period_start=now - timedelta(seconds=1), next_reset_at=now + timedelta(days=30)
    )
    result = kernia_billing.track(user, "messages", 1)
    assert result.usage == 1


def test_subscribing_reanchors_resets_at_the_subscription_period_and_keeps_usage(
    user, free_plan, messages
):
    from kernia_billing.periods import add_months

    pro = PlanFactory(key="pro")
    PlanFeatureFactory(plan=pro, feature=messages, included=1000, reset_period=ResetPeriod.MONTH)
    price = PlanPriceFactory(plan=pro)
    customer = get_or_create_customer(user)
    now = datetime.now(UTC).replace(microsecond=0)
    created = now - timedelta(days=20)
    BillingCustomer.objects.filter(pk=customer.pk).update(created_at=created)
    Entitlement.objects.filter(customer=customer).update(
        reset_anchor=created, period_start=created, next_reset_at=add_months(created, 1)
    )
    customer.refresh_from_db()
    kernia_billing.track(user, "messages", 80)

    start = now - timedelta(days=2)
    _subscribe(customer, price, start=start, end=add_months(start, 1))

    result = kernia_billing.check(user, "messages")
    assert (result.plan, result.usage, result.balance) == ("pro", 80, 920)
    assert result.next_reset_at == add_months(start, 1)
    entitlement = Entitlement.objects.get(customer=customer, feature=messages)
    assert entitlement.reset_anchor == start
    assert entitlement.usage == ledger_usage(customer, "messages", entitlement.period_start)


def test_a_default_plan_added_later_reaches_existing_customers(db, messages):
    user = UserFactory()
    assert kernia_billing.check(user, "messages").reason == "no_plan"
    free = PlanFactory(key="free", is_default=True)
    PlanFeatureFactory(plan=free, feature=messages, included=100)
    # Created behind the services' back (shell, data migration): the next read adopts it.
    result = kernia_billing.check(user, "messages")
    assert (result.allowed, result.plan, result.balance) == (True, "free", 100)


def test_switching_the_default_plan_moves_customers_without_subscription(user, free_plan, messages):
    from kernia_billing.services.entitlements.sync import sync_plan_customers

    kernia_billing.track(user, "messages", 30)
    starter = PlanFactory(key="starter")
    PlanFeatureFactory(plan=starter, feature=messages, included=500)
    free_plan.is_default = False
    free_plan.save()
    starter.is_default = True
    starter.save()
    sync_plan_customers([free_plan.pk, starter.pk])  # what the admin and the loader call
    result = kernia_billing.check(user, "messages")
    assert (result.plan, result.included, result.usage) == ("starter", 500, 30)
