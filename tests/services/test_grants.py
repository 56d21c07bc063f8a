"""Grants: balances from several sources, consumption order, expiry, clawbacks, audit."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import kernia_billing
from kernia_billing.exceptions import IdempotencyConflict, InsufficientBalance, InvalidRequest
from kernia_billing.models import Grant, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=20, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "messages")
    return user


def test_balance_is_plan_plus_grants_and_plan_is_drawn_first(owner):
    topup = kernia_billing.grant(owner, "messages", 30, reason="pack")
    assert kernia_billing.check(owner, "messages").balance == 50

    result = kernia_billing.track(owner, "messages", 15)

    assert result.balance == 35
    topup.refresh_from_db()
    assert topup.consumed == 0  # the plan's grant covered it
    assert UsageEvent.objects.get().draws is None


def test_draw_spans_plan_then_soonest_expiring_then_never_expiring(owner):
    now = timezone.now()
    never = kernia_billing.grant(owner, "messages", 10)
    late = kernia_billing.grant(owner, "messages", 10, expires_at=now + timedelta(days=20))
    soon = kernia_billing.grant(owner, "messages", 10, expires_at=now + timedelta(days=5))

    result = kernia_billing.track(owner, "messages", 35)

    assert result.balance == 15
    draws = UsageEvent.objects.get().draws
    assert draws == [
        {"grant": None, "amount": 20},
        {"grant": soon.pk, "amount": 10},
        {"grant": late.pk, "amount": 5},
    ]
    for grant, consumed in ((never, 0), (late, 5), (soon, 10)):
        grant.refresh_from_db()
        assert grant.consumed == consumed
    assert audit_ledger() == []


def test_refused_when_all_grants_together_fall_short(owner):
    kernia_billing.grant(owner, "messages", 5)
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(owner, "messages", 26)
    assert UsageEvent.objects.count() == 0
    assert kernia_billing.track(owner, "messages", 25).balance == 0


def test_expired_grant_is_never_drawn_and_its_remainder_is_recorded_once(owner):
    start = timezone.now()
    promo = kernia_billing.grant(owner, "messages", 10, expires_at=start + timedelta(hours=1))
    kernia_billing.track(owner, "messages", 22)  # 20 from the plan, 2 from the promotion
    with time_machine.travel(start + timedelta(hours=1), tick=False):
        assert kernia_billing.check(owner, "messages").balance == 0
        with pytest.raises(InsufficientBalance):
            kernia_billing.track(owner, "messages", 1)
        kernia_billing.check(owner, "messages")
    promo.refresh_from_db()
    assert (promo.consumed, promo.expired, promo.remaining) == (2, 8, 0)
    assert audit_ledger() == []


def test_grant_is_idempotent_and_a_different_payload_conflicts(owner):
    first = kernia_billing.grant(owner, "messages", 500, idempotency_key="outage-7")
    again = kernia_billing.grant(owner, "messages", 500, idempotency_key="outage-7")
    assert first.pk == again.pk
    with pytest.raises(IdempotencyConflict):
        kernia_billing.grant(owner, "messages", 600, idempotency_key="outage-7")
    assert kernia_billing.check(owner, "messages").balance == 520


def test_revoke_takes_what_is_left_and_keeps_what_was_consumed(owner):
    pack = kernia_billing.grant(owner, "messages", 30)
    kernia_billing.track(owner, "messages", 25)
    pack = kernia_billing.revoke(pack, reason="refund")
    assert (pack.consumed, pack.revoked, pack.remaining) == (5, 25, 0)
    assert kernia_billing.check(owner, "messages").balance == 0
    assert audit_ledger() == []


def test_clawback_takes_unconsumed_amount_only(owner):
    kernia_billing.grant(owner, "messages", 10)
    kernia_billing.track(owner, "messages", 26)  # 6 of the grant consumed
    record = kernia_billing.grant(owner, "messages", -100, reason="abuse")
    assert record.details["clawback"]["taken"] == 4
    assert kernia_billing.check(owner, "messages").balance == 0
    assert audit_ledger() == []


def test_bad_grants_are_refused(owner):
    FeatureFactory(key="sso", kind="boolean")
    with pytest.raises(InvalidRequest):
        kernia_billing.grant(owner, "messages", 0)
    with pytest.raises(InvalidRequest):
        kernia_billing.grant(owner, "sso", 5)
    with pytest.raises(InvalidRequest):
        kernia_billing.grant(owner, "messages", 5, expires_at=timezone.now() - timedelta(1))


def test_batch_draws_across_grants_like_single_track(owner):
    pack = kernia_billing.grant(owner, "messages", 30)
    events = [kernia_billing.TrackRequest(feature="messages", amount=10) for _ in range(6)]
    results = kernia_billing.track_batch(owner, events)
    assert [r.ok for r in results] == [True] * 5 + [False]
    pack.refresh_from_db()
    assert pack.consumed == 30
    assert kernia_billing.check(owner, "messages").balance == 0
    assert audit_ledger() == []


def test_reset_keeps_the_grant_and_refills_the_plan(owner):
    kernia_billing.grant(owner, "messages", 30)
    kernia_billing.track(owner, "messages", 30)
    with time_machine.travel(timezone.now() + timedelta(days=32), tick=False):
        check = kernia_billing.check(owner, "messages", breakdown=True)
        assert check.balance == 40
        assert [(p.source, p.remaining) for p in check.grants] == [
            ("plan", 20),
            ("adjustment", 20),
        ]
        assert audit_ledger() == []


def test_check_stays_one_query_with_grants(owner):
    kernia_billing.grant(owner, "messages", 30, expires_at=timezone.now() + timedelta(days=3))
    with CaptureQueriesContext(connection) as queries:
        assert kernia_billing.check(owner, "messages").balance == 50
    assert len(queries) <= 2


def test_track_covered_by_the_plan_stays_two_statements_with_grants(owner):
    for _ in range(5):
        kernia_billing.grant(owner, "messages", 10, expires_at=timezone.now() + timedelta(days=3))
    kernia_billing.track(owner, "messages", 1)  # warm
    with CaptureQueriesContext(connection) as queries:
        kernia_billing.track(owner, "messages", 1)
    statements = [q for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    # Deduct, then the ledger row with its daily rollup: one statement on PostgreSQL,
    # the rollup upsert apart on SQLite (no data-modifying CTE there).
    assert len(statements) <= (2 if connection.vendor == "postgresql" else 3)


def test_customer_state_lists_grants_with_expiry(owner):
    expires = timezone.now() + timedelta(days=3)
    kernia_billing.grant(owner, "messages", 30, expires_at=expires)
    state = kernia_billing.customer_state(owner)
    (messages,) = state.entitlements
    assert messages.balance == 50
    assert messages.next_expiry == expires
    assert [p.source for p in messages.grants] == ["plan", "adjustment"]
    assert Grant.objects.count() == 1


def test_a_downgrade_debt_is_carried_by_the_grants(owner):
    from kernia_billing.models import Entitlement

    kernia_billing.grant(owner, "messages", 5)
    kernia_billing.track(owner, "messages", 20)
    Entitlement.objects.update(included=10)  # as a downgrade to a smaller plan leaves it
    assert kernia_billing.check(owner, "messages").balance == -5
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(owner, "messages", 1)
    assert audit_ledger() == []
