"""Renewals cost a fixed number of statements, whatever the number of features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing.models import BillingCustomer, Entitlement, FeatureKind, ResetPeriod
from kernia_billing.services.customers import get_or_create_customer, set_plan
from kernia_billing.services.entitlements.resets import reset_for_new_period
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

START = datetime(2030, 5, 10, 12, 0, tzinfo=UTC)


def _customer_with_features(count: int) -> BillingCustomer:
    plan = PlanFactory(key=f"plan{count}", is_default=count == 1)
    keys = [f"f{count}_{i}" for i in range(count)]
    for key in keys:
        feature = FeatureFactory(key=key, name=key, kind=FeatureKind.METERED)
        PlanFeatureFactory(
            plan=plan, feature=feature, included=100, reset_period=ResetPeriod.BILLING
        )
    user = UserFactory()
    customer = get_or_create_customer(user)
    BillingCustomer.objects.filter(pk=customer.pk).update(
        current_period_start=START, current_period_end=START + timedelta(days=30)
    )
    customer.refresh_from_db()
    set_plan(customer, plan)
    for key in keys:
        kernia_billing.track(user, key, 5)
    customer.refresh_from_db()
    return customer


def _renewal_queries(customer: BillingCustomer) -> int:
    new_start = START + timedelta(days=30)
    BillingCustomer.objects.filter(pk=customer.pk).update(
        current_period_start=new_start, current_period_end=new_start + timedelta(days=30)
    )
    customer.refresh_from_db()
    features = Entitlement.objects.filter(customer=customer).count()
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        reset = reset_for_new_period(customer, new_start)
    assert reset == features
    control = ("BEGIN", "SAVEPOINT", "RELEASE", "COMMIT")
    return sum(1 for q in captured.captured_queries if not q["sql"].upper().startswith(control))


@pytest.mark.django_db
def test_a_billing_period_reset_is_one_update_whatever_the_number_of_features() -> None:
    with time_machine.travel(START + timedelta(hours=1), tick=False):
        one = _customer_with_features(1)
        four = _customer_with_features(4)
        statements = _renewal_queries(one)
        assert _renewal_queries(four) == statements
    # The lock and the one UPDATE.
    assert statements == 2
    # Recomputed from the ledger since the new period start: nothing was tracked since.
    assert set(Entitlement.objects.values_list("usage", flat=True)) == {0}
    assert audit_ledger() == []
