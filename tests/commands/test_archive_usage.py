"""kernia_archive_usage: old events leave the hot ledger; audit and history stay whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

import kernia_billing
from kernia_billing import selectors
from kernia_billing.models import (
    ArchivedUsageEvent,
    FeatureKind,
    ResetPeriod,
    UsageCorrection,
    UsageEvent,
)
from kernia_billing.services.grants.issue import grant
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.metering.corrections import adjust_usage
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

START = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)


def run(*args: str) -> str:
    out = StringIO()
    call_command("kernia_archive_usage", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def monthly(db):
    messages = FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)
    seats = FeatureFactory(key="seats", name="Seats", kind=FeatureKind.QUANTITY)
    plan = PlanFactory(key="free", name="Free", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=100, reset_period=ResetPeriod.MONTH)
    PlanFeatureFactory(plan=plan, feature=seats, included=10, reset_period=ResetPeriod.NONE)
    return plan


@pytest.mark.django_db
def test_events_older_than_the_kept_periods_move_and_nothing_drifts(monthly):
    user = UserFactory()
    with time_machine.travel(START, tick=False) as clock:
        kernia_billing.track(user, "seats", 2)
        for month in range(5):  # one event a month, the customer's periods start on the 15th
            clock.move_to(START + timedelta(days=31 * month, hours=1))
            kernia_billing.track(user, "messages", month + 1)
        customer_id = UsageEvent.objects.first().customer_id
        history = selectors.daily_usage(customer_id)
        assert "Would archive 3 usage event(s)" in run("--keep-periods", "1", "--dry-run")
        assert ArchivedUsageEvent.objects.count() == 0

        assert "Archived 3 usage event(s)" in run("--keep-periods", "1")

        kept = sorted(UsageEvent.objects.values_list("amount", flat=True))
        assert kept == [2, 4, 5]  # seats never reset: kept; this month's and last month's
        assert sorted(ArchivedUsageEvent.objects.values_list("amount", flat=True)) == [1, 2, 3]
        assert selectors.daily_usage(customer_id) == history  # rollups keep history
        assert audit_ledger() == []
        assert "Archived 0 usage event(s)" in run("--keep-periods", "1")  # idempotent
        kernia_billing.track(user, "messages", 1)  # tracking goes on
        assert audit_ledger() == []


@pytest.mark.django_db
def test_archived_draws_still_count_for_their_grant(monthly):
    user = UserFactory()
    with time_machine.travel(START, tick=False) as clock:
        kernia_billing.track(user, "messages", 100)
        grant(user, "messages", 50, reason="goodwill", idempotency_key="promo")
        kernia_billing.track(user, "messages", 5)  # drawn from the grant, which never resets
        clock.move_to(START + timedelta(days=70))
        kernia_billing.track(user, "messages", 1)
        run("--keep-periods", "0")
        assert ArchivedUsageEvent.objects.filter(from_grants=5).exists()
        assert audit_ledger() == []


@pytest.mark.django_db
def test_a_corrections_ledger_row_stays_with_its_correction(monthly):
    user = UserFactory()
    with time_machine.travel(START, tick=False) as clock:
        kernia_billing.track(user, "messages", 10)
        adjust_usage(user, "messages", -3, reason="double count")
        clock.move_to(START + timedelta(days=70))
        kernia_billing.track(user, "messages", 1)

        assert "Archived 1 usage event(s)" in run("--keep-periods", "0")

        correction = UsageCorrection.objects.get()
        assert correction.usage_event.amount == -3  # still there, not a dangling link
        assert audit_ledger() == []


@pytest.mark.django_db
def test_refuses_a_negative_number_of_periods(monthly):
    with pytest.raises(CommandError):
        run("--keep-periods", "-1")
