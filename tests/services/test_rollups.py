"""Daily usage rollups: written with every ledger row, read by history, checked by the audit."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.apps import apps
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing import selectors
from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import Entitlement, UsageEvent, UsageRollup
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.reconcile import reconcile_customers
from kernia_billing.types import TrackRequest
from tests.factories import UserFactory

BASE = datetime(2030, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(BASE, tick=False) as traveller:
        yield traveller


def rollups(customer_id: int) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (str(r.day), r.feature.key): (r.amount, r.events)
        for r in UsageRollup.objects.filter(customer_id=customer_id).select_related("feature")
    }


def ledger_days(customer_id: int) -> dict[tuple[str, str], tuple[int, int]]:
    totals = selectors.daily_usage_totals(selectors.usage_events(customer_id))
    return {(str(t["date"]), t["feature"]): (t["amount"], t["events"]) for t in totals}


@pytest.mark.django_db
def test_track_and_batch_write_the_days_rollup_in_the_same_transaction(free_plan, user, clock):
    kernia_billing.track(user, "messages", 2)
    kernia_billing.track(user, "messages", 3, now=BASE + timedelta(hours=11, minutes=59))
    kernia_billing.track(user, "messages", 4, now=BASE + timedelta(hours=12))  # next UTC day
    kernia_billing.track_batch(
        user, [TrackRequest("messages", 1), TrackRequest("messages", 5, idempotency_key="k")]
    )
    kernia_billing.track_batch(user, [TrackRequest("messages", 5, idempotency_key="k")])  # replay
    customer_id = UsageEvent.objects.get(amount=4).customer_id

    assert rollups(customer_id) == {
        ("2030-05-10", "messages"): (11, 4),
        ("2030-05-11", "messages"): (4, 1),
    }
    assert rollups(customer_id) == ledger_days(customer_id)
    assert audit_ledger() == []


@pytest.mark.django_db
def test_a_refused_or_rolled_back_track_leaves_no_rollup(free_plan, user, clock):
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(user, "messages", 101)
    with transaction.atomic():
        kernia_billing.track(user, "messages", 1)
        transaction.set_rollback(True)
    assert UsageRollup.objects.count() == 0


@pytest.mark.django_db
def test_daily_usage_is_exact_for_bounds_inside_a_day(free_plan, user, clock):
    hours = [0, 1, 5, 11, 12, 13, 30, 40, 47, 60]
    for hour in hours:
        kernia_billing.track(user, "messages", hour % 5 + 1, now=BASE + timedelta(hours=hour))
    customer_id = UsageEvent.objects.first().customer_id
    bounds = [None, *(BASE + timedelta(hours=h, minutes=m) for h in (0, 12, 30) for m in (0, 1))]
    for since in bounds:
        for until in bounds:
            if since is not None and until is not None and since >= until:
                continue
            events = selectors.usage_events(customer_id, since=since, until=until)
            expected = selectors.daily_usage_totals(events)
            got = selectors.daily_usage(customer_id, since=since, until=until)
            assert got == expected, (since, until)


@pytest.mark.django_db
def test_the_audit_reports_a_rollup_that_differs_and_the_fix_rebuilds_it(free_plan, user, clock):
    kernia_billing.track(user, "messages", 2)
    kernia_billing.track(user, "messages", 3, now=BASE + timedelta(days=1))
    customer_id = UsageEvent.objects.first().customer_id
    UsageRollup.objects.filter(day=BASE.date()).update(amount=7)
    UsageRollup.objects.create(
        customer_id=customer_id,
        feature_id=UsageEvent.objects.first().feature_id,
        day=(BASE + timedelta(days=2)).date(),
        amount=1,
        events=1,
    )

    drifts = audit_ledger()
    assert [(d.kind, d.subject, d.expected, d.actual, d.fixed) for d in drifts] == [
        ("rollup", "messages rollup 2030-05-10", (2, 1), (7, 1), False),
        ("rollup", "messages rollup 2030-05-12", None, (1, 1), False),
    ]
    assert all(d.fixed for d in audit_ledger(fix=True))
    assert audit_ledger() == []
    assert rollups(customer_id) == ledger_days(customer_id)


@pytest.mark.django_db
def test_the_migration_backfills_rollups_of_an_existing_ledger(free_plan, user, clock):
    for day in range(4):
        kernia_billing.track(user, "messages", day + 1, now=BASE + timedelta(days=day, hours=3))
    customer_id = UsageEvent.objects.first().customer_id
    expected = rollups(customer_id)
    UsageRollup.objects.all().delete()

    migration = importlib.import_module("kernia_billing.migrations.0006_scale")
    migration.backfill_rollups(apps, connection.schema_editor())

    assert rollups(customer_id) == expected == ledger_days(customer_id)


def _customers_with_usage(count: int) -> None:
    for _ in range(count):
        owner = UserFactory()
        kernia_billing.track(owner, "messages", 2)
        kernia_billing.track(owner, "messages", 1, now=BASE + timedelta(days=1))


def _queries(work) -> int:
    with CaptureQueriesContext(connection) as captured:
        work()
    return len(captured.captured_queries)


@pytest.mark.django_db
def test_audit_and_mirror_reconcile_cost_no_query_per_customer(free_plan, clock):
    _customers_with_usage(3)
    few = (_queries(audit_ledger), _queries(reconcile_customers))
    _customers_with_usage(12)
    assert (_queries(audit_ledger), _queries(reconcile_customers)) == few
    assert audit_ledger() == [] and reconcile_customers() == []


@pytest.mark.django_db
def test_the_audit_runs_in_batches_that_resume(free_plan, clock):
    _customers_with_usage(5)

    ids = list(Entitlement.objects.order_by("pk").values_list("pk", flat=True))
    Entitlement.objects.filter(pk__in=[ids[1], ids[4]]).update(usage=99)
    seen: list[tuple[str, int, int]] = []
    drifts = audit_ledger(batch_size=2, progress=lambda *args: seen.append(args))
    assert seen == [
        ("entitlements", 2, ids[1]),
        ("entitlements", 4, ids[3]),
        ("entitlements", 5, ids[4]),
    ]
    assert [(d.expected, d.actual) for d in drifts] == [(3, 99), (3, 99)]
    resumed = audit_ledger(batch_size=2, after_entitlement=ids[3])
    assert [(d.expected, d.actual) for d in resumed] == [(3, 99)]


@pytest.mark.django_db
def test_capped_count_stops_counting_at_the_cap(free_plan, user, clock):
    for _ in range(5):
        kernia_billing.track(user, "messages", 1)
    events = selectors.usage_events(UsageEvent.objects.first().customer_id)
    assert selectors.capped_count(events, cap=5) == (5, False)
    assert selectors.capped_count(events, cap=4) == (4, True)
