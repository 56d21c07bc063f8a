"""Every accepted track beyond the grant yields exactly its overage units in the outbox."""

from __future__ import annotations

import pytest
from django.db import connection
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernia_billing import track
from kernia_billing.models import OverageReport, ReportStatus
from kernia_billing.services.metering.outbox import overage_units, overage_units_sql
from kernia_billing.services.usage.batch import track_batch
from kernia_billing.types import TrackRequest


@pytest.mark.parametrize(
    ("before", "after", "units"),
    [(98, 93, 0), (2, -3, 3), (0, -5, 5), (-3, -8, 5), (5, 5, 0), (-4, -2, -2)],
)
def test_overage_units_from_balance_before_and_after(before, after, units):
    assert overage_units(before, after) == units


@pytest.mark.postgres
@pytest.mark.django_db
@given(
    after=st.integers(-(2**63) + 10**9, 2**63 - 1) | st.integers(-(10**12), 10**12),
    amount=st.integers(-(10**9), 10**9),
)
@example(after=2**63 - 1, amount=5)  # the balance before past bigint's end
@example(after=-(2**63) + 10**9, amount=-(10**9))
@settings(max_examples=60, deadline=None)
def test_the_sql_of_overage_units_is_overage_units(after, amount):
    """The one statement's outbox insert decides in SQL what record_overage decides."""
    sql = overage_units_sql("%s::bigint", "%s::bigint").replace("%s", "{}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + sql.format("%s", "%s", "%s"), [after, after, amount])
        (units,) = cursor.fetchone()
    assert units == overage_units(after + amount, after)


def test_a_track_past_the_grant_queues_exactly_its_overage(metered):
    customer = metered.customer()
    owner = customer.owner
    track(owner, "messages", 98)
    assert not OverageReport.objects.exists()
    track(owner, "messages", 5)  # 98 of 100 used: 2 within the grant, 3 beyond
    track(owner, "messages", 4)
    reports = list(OverageReport.objects.order_by("id"))
    assert [r.value for r in reports] == [3, 4]
    assert all(r.status == ReportStatus.PENDING for r in reports)
    assert len({r.identifier for r in reports}) == 2
    assert reports[0].occurred_at == reports[0].usage_event.created_at


def test_a_refused_or_replayed_track_queues_nothing_more(metered):
    owner = metered.customer().owner
    track(owner, "messages", 105, idempotency_key="k1")
    track(owner, "messages", 105, idempotency_key="k1")
    assert [r.value for r in OverageReport.objects.all()] == [5]


def test_batch_queues_the_overage_of_each_accepted_event(metered):
    owner = metered.customer().owner
    results = track_batch(
        owner,
        [TrackRequest(feature="messages", amount=60) for _ in range(3)],
    )
    assert all(r.ok for r in results)
    assert sorted(r.value for r in OverageReport.objects.all()) == [20, 60]
