"""A batch that waits for its entitlement while the period resets counts in the new period.

Regression found by the soak (tests/load/test_soak.py): ``track_batch`` read its moment
before ``SELECT ... FOR UPDATE``. While it waited for the row, a lazy reset (or the
renewal webhook) started the next period; the batch then added its events to the new
period's usage with ledger rows dated just before that period, and the ledger audit
found usage above the sum of the period's events.

PostgreSQL only: on SQLite the batch waits at ``BEGIN IMMEDIATE``, before any moment.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, connections, transaction

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.models import Entitlement, FeatureKind, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.postgres

BOUNDARY = datetime(2026, 3, 10, 12, 0, 1, tzinfo=UTC)


def wait_for_a_lock_waiter(attempts: int = 500) -> None:
    """Poll (by count: the frozen clock stops time.monotonic too) for a session waiting."""
    with connection.cursor() as cursor:
        for _ in range(attempts):
            # Inside a transaction the activity view is a snapshot unless cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the batch never waited for the entitlement row")


def test_a_batch_waiting_across_a_reset_counts_in_the_new_period(transactional_db: None) -> None:
    messages = FeatureFactory(key="messages", kind=FeatureKind.METERED)
    plan = PlanFactory(key="daily", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=100, reset_period=ResetPeriod.DAY)
    with time_machine.travel(BOUNDARY - timedelta(days=1), tick=False) as traveller:
        user = UserFactory()
        kernia_billing.track(user, "messages", 10)  # a day-long period ending at BOUNDARY
        traveller.move_to(BOUNDARY - timedelta(seconds=1))
        results: list[Any] = []

        def batch() -> None:
            try:
                results.append(kernia_billing.track_batch(user, [TrackRequest("messages", 5)]))
            except Exception as error:  # asserted on below
                results.append(error)
            finally:
                connections.close_all()

        with transaction.atomic():
            # Another writer holds the row while the boundary passes, then resets it.
            Entitlement.objects.select_for_update().get()
            worker = threading.Thread(target=batch)
            worker.start()
            wait_for_a_lock_waiter()
            traveller.move_to(BOUNDARY + timedelta(seconds=1))
            assert kernia_billing.check(user, "messages").usage == 0  # the lazy reset
        worker.join(timeout=30)

    [answer] = results
    assert not isinstance(answer, Exception), answer
    assert [r.ok for r in answer] == [True]
    entitlement = Entitlement.objects.get()
    assert entitlement.period_start == BOUNDARY
    assert entitlement.usage == 5
    newest = UsageEvent.objects.latest("id")
    assert newest.created_at >= entitlement.period_start
    assert audit_ledger() == []
