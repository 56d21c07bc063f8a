"""Many customers, many overage events, a period boundary: Stripe ends equal to the ledger."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from kernia_billing import track
from kernia_billing.models import Entitlement, OverageReport, ReportStatus
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.metering.sender import send_pending
from kernia_billing.services.usage.batch import track_batch
from kernia_billing.types import TrackRequest
from tests.metering.conftest import ledger_overage


# Volume through the sender, not database behaviour: it runs once, in the SQLite leg
# (the PostgreSQL leg, which also carries the load and soak tests, is the longer one).
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="runs in the SQLite leg"
)
def test_ten_thousand_overage_events_over_a_hundred_customers(metered, fake_stripe, settings):
    settings.KERNIA_BILLING = {"METER_SEND_BATCH": 500}
    customers = [metered.customer(f"c{i:03d}") for i in range(100)]
    for customer in customers:
        track(customer.owner, "messages", 100)  # the grant, used up
        results = track_batch(
            customer.owner, [TrackRequest(feature="messages", amount=1 + i % 3) for i in range(100)]
        )
        assert all(r.ok for r in results)
    assert OverageReport.objects.count() == 10_000
    # Stripe has a bad moment in the middle of the drain.
    fake_stripe.inject_fault("/v1/billing/meter_events", status=500, times=3)
    for _attempt in range(5):  # the sender's loop, without waiting out the backoff
        send_pending(now=timezone.now() + timedelta(minutes=10))
    assert not OverageReport.objects.exclude(status=ReportStatus.SENT).exists()
    for customer in customers:
        assert metered.stripe_total(customer) == ledger_overage(customer) == 199
    assert reconcile_meters() == []


@pytest.mark.clock_matrix("today", "jan31", "feb29-leap", "dst-new-york")
def test_a_period_boundary_crossed_while_events_are_queued(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 103)
    first = Entitlement.objects.get(customer=customer)
    boundary = first.next_reset_at
    assert boundary is not None
    with time_machine.travel(boundary + timedelta(minutes=1), tick=True):
        track(customer.owner, "messages", 107)  # a new period: 100 granted again, 7 over
        send_pending()
        assert (
            metered.stripe_total(
                customer, int(first.period_start.timestamp()), int(boundary.timestamp())
            )
            == 3
        )
        assert (
            metered.stripe_total(
                customer,
                int(boundary.timestamp()),
                int((timezone.now() + timedelta(1)).timestamp()),
            )
            == 7
        )
        assert reconcile_meters() == []
