"""Rollovers: unused plan grant carried forward at a reset, capped, FIFO, expiring exactly."""

from __future__ import annotations

import pytest
import time_machine
from django.utils import timezone

import kernia_billing
from kernia_billing.models import Entitlement, Grant, GrantSource, ResetPeriod
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.clock_matrix]


@pytest.fixture
def owner():
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
    user = UserFactory()
    kernia_billing.check(user, "messages")
    return user


def _boundary():
    return Entitlement.objects.get().next_reset_at


def test_unused_plan_grant_rolls_over_capped_and_stacks_fifo(owner):
    kernia_billing.track(owner, "messages", 30)  # 70 unused in the first period
    first = _boundary()
    with time_machine.travel(first, tick=False):
        assert kernia_billing.check(owner, "messages").balance == 170
        second = _boundary()  # nothing used in the second period: 100 unused
    with time_machine.travel(second, tick=False):
        # 70 of the first rollover alive, capped at 150 alive: 80 more.
        check = kernia_billing.check(owner, "messages", breakdown=True)
        sources = [(p.source, p.remaining) for p in check.grants]
        assert sources == [("plan", 100), ("rollover", 70), ("rollover", 80)]
        kernia_billing.track(owner, "messages", 120)  # the plan, then the oldest rollover
        third = _boundary()
    with time_machine.travel(third, tick=False):
        # The first rollover expired at the third boundary (two periods after it was made).
        assert kernia_billing.check(owner, "messages").balance == 100 + 80
        assert audit_ledger() == []
    oldest, newer = Grant.objects.filter(source=GrantSource.ROLLOVER).order_by("pk")
    assert (oldest.consumed, oldest.expired, oldest.expires_at) == (20, 50, third)
    assert (newer.consumed, newer.remaining) == (0, 80)


def test_idle_periods_roll_over_in_turn(owner):
    later = _boundary()
    with time_machine.travel(later, tick=False):
        pass
    entitlement = Entitlement.objects.get()
    with time_machine.travel(entitlement.next_reset_at + (later - entitlement.period_start) * 2):
        kernia_billing.check(owner, "messages")
        assert audit_ledger() == []
        alive = sum(g.remaining for g in Grant.objects.all() if g.expires_at > timezone.now())
        assert alive <= 150
