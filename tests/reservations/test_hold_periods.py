"""A hold is in the period its deduction was in, and follows its entitlement when a plan
edit moves that period: closers compare periods to know whether the hold is still in
the entitlement's usage, so a wrong period leaves units counted after the hold closes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

import kernia_billing
from kernia_billing.exceptions import InvalidRequest
from kernia_billing.models import BillingCustomer, Entitlement, PlanFeature, ResetPeriod
from kernia_billing.services.entitlements.resets import reset_for_new_period
from kernia_billing.services.entitlements.sync import sync_plan_customers
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.reservations import holds
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db


def _owner(reset_period: str) -> Any:
    tokens = FeatureFactory(key="tokens")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=tokens, included=100, reset_period=reset_period)
    user = UserFactory()
    kernia_billing.check(user, "tokens")
    return user


def test_a_plan_edit_that_changes_the_reset_period_takes_open_holds_along():
    owner = _owner(ResetPeriod.MONTH)
    held = kernia_billing.reserve(owner, "tokens", 40, ttl=timedelta(days=7))
    released = kernia_billing.reserve(owner, "tokens", 10, ttl=timedelta(days=7))
    with time_machine.travel(timezone.now() + timedelta(days=2, hours=1), tick=False):
        PlanFeature.objects.update(reset_period=ResetPeriod.DAY)
        sync_plan_customers(list(PlanFeature.objects.values_list("plan_id", flat=True)))
        assert Entitlement.objects.get().usage == 50  # the plan edit keeps usage
        kernia_billing.release(released.id)
        kernia_billing.confirm(held.id, actual=25)

        assert Entitlement.objects.get().usage == 25
        assert kernia_billing.check(owner, "tokens").balance == 75
        assert audit_ledger() == []


def test_a_renewal_committed_between_the_read_and_the_deduction_stamps_the_new_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = _owner(ResetPeriod.BILLING)
    moment = timezone.now() + timedelta(days=1)
    read_row = holds.current

    def renewal_lands_after_the_read(row: Any, at: Any) -> Any:
        # Forces the interleaving a concurrent renewal webhook can take: reserve has read
        # the row, then the webhook's reset commits; both run for real.
        fresh = read_row(row, at)
        customer = BillingCustomer.objects.get(pk=row.customer_id)
        customer.current_period_start = at - timedelta(seconds=1)
        customer.current_period_end = at + timedelta(days=30)
        customer.save()
        reset_for_new_period(customer, customer.current_period_start)
        return fresh

    monkeypatch.setattr(holds, "current", renewal_lands_after_the_read)
    hold = kernia_billing.reserve(owner, "tokens", 40, now=moment)
    monkeypatch.undo()

    entitlement = Entitlement.objects.get()
    assert entitlement.usage == 40
    kernia_billing.release(hold.id, now=moment + timedelta(seconds=5))
    entitlement.refresh_from_db()
    assert entitlement.usage == 0
    assert audit_ledger() == []


def test_a_confirm_dated_before_the_period_is_refused_and_changes_nothing():
    owner = _owner(ResetPeriod.MONTH)
    hold = kernia_billing.reserve(owner, "tokens", 40)
    start = Entitlement.objects.get().period_start

    with pytest.raises(InvalidRequest):
        kernia_billing.confirm(hold.id, now=start - timedelta(seconds=1))

    assert Entitlement.objects.get().usage == 40  # the hold is still open
    assert kernia_billing.confirm(hold.id, actual=30).status == "confirmed"
    assert Entitlement.objects.get().usage == 30
    assert audit_ledger() == []


def test_confirming_after_a_drawn_grant_expired_keeps_the_audit_clean():
    """The hold drew from the top-up while it was live; the confirm's row carries that
    draw, dated at the confirm: the audit dates it at the hold."""
    owner = _owner(ResetPeriod.MONTH)
    kernia_billing.grant(
        owner, "tokens", 30, source="topup", expires_at=timezone.now() + timedelta(minutes=5)
    )
    hold = kernia_billing.reserve(owner, "tokens", 120, ttl=timedelta(hours=1))
    with time_machine.travel(timezone.now() + timedelta(minutes=6), tick=False):
        kernia_billing.confirm(hold.id)

        assert Entitlement.objects.get().usage == 120
        assert audit_ledger() == []
