"""kernia_reconcile --meters: Stripe's meter totals against the overage we sent."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command

from kernia_billing import track
from kernia_billing.models import OverageReport, ReportStatus
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.metering.sender import send_pending
from tests.metering.conftest import ledger_overage


def _reconcile(*args: str) -> str:
    out = StringIO()
    call_command("kernia_reconcile", "--meters", *args, stdout=out)
    return out.getvalue()


def test_no_difference_once_the_queue_is_drained(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 130)
    assert "30 queued" in _reconcile()  # owed by the sender, not a Stripe difference
    send_pending()
    assert "No meter difference." in _reconcile()


def test_fix_sends_what_stripe_is_missing_once(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 110)
    track(customer.owner, "messages", 5)
    send_pending()
    # A row we believe sent never reached Stripe (e.g. lost before this release).
    lost = OverageReport.objects.order_by("id").first()
    metered.fake.store._meter_events.pop(lost.identifier)
    [drift] = reconcile_meters()
    assert (drift.sent, drift.in_stripe, drift.difference) == (15, 5, 10)
    assert "missing units sent for 1" in _reconcile("--fix")
    assert metered.stripe_total(customer) == 15
    assert "No meter difference." in _reconcile("--fix")
    assert metered.stripe_total(customer) == 15
    assert ledger_overage(customer, kind="track") == 15


def test_a_repeated_fix_over_a_lagging_summary_bills_nothing_twice(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 120)
    OverageReport.objects.update(status=ReportStatus.SENT)  # never reached Stripe
    reconcile_meters(fix=True)
    fix = OverageReport.objects.get(kind="fix")
    # Stripe's summary has not caught up yet: the fix event is invisible to it.
    metered.fake.store._meter_events[fix.identifier]["cancelled"] = True
    reconcile_meters(fix=True)
    assert OverageReport.objects.filter(kind="fix").count() == 1
