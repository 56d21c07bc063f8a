"""kernia_reconcile over grants: --expire records due expiries; the audit sees grant drift."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

import kernia_billing
from kernia_billing.models import Grant, ResetPeriod
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


def run(*args: str) -> str:
    out = StringIO()
    call_command("kernia_reconcile", *args, stdout=out)
    return out.getvalue()


def test_expire_records_due_expiries_once(owner):
    expires = timezone.now() + timedelta(hours=1)
    promo = kernia_billing.grant(owner, "messages", 30, expires_at=expires)
    with time_machine.travel(expires + timedelta(minutes=1)):
        assert "expiries on 1 entitlement(s)" in run("--expire")
        assert "expiries on 0 entitlement(s)" in run("--expire")
        assert "No drift." in run()
    promo.refresh_from_db()
    assert (promo.expired, promo.remaining) == (30, 0)


def test_a_grant_whose_consumption_differs_from_its_draws_is_reported(owner):
    pack = kernia_billing.grant(owner, "messages", 30)
    Grant.objects.filter(pk=pack.pk).update(consumed=5)  # as a bad manual edit would
    output = run()
    assert f"grant {pack.pk}" in output
