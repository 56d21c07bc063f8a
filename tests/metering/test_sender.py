"""The sender bills each queued overage exactly once, whatever Stripe or the sender does."""

from __future__ import annotations

from datetime import timedelta

import pytest
import stripe
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from kernia_billing import track
from kernia_billing.models import OverageReport, ReportStatus
from kernia_billing.services.metering.sender import requeue, send_pending
from tests.metering.conftest import ledger_overage
from tests.threads import run_concurrently, skip_unless_shared_database

LATER = timedelta(minutes=10)  # past any backoff


def _events(fake):
    return [r for r in fake.requests if r.path == "/v1/billing/meter_events"]


def test_queued_overage_reaches_stripe_once_with_its_identifier_and_time(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 98)
    track(customer.owner, "messages", 5)
    summary = send_pending()
    assert (summary.sent, summary.parked) == (1, 0)
    report = OverageReport.objects.get()
    assert report.status == ReportStatus.SENT
    assert metered.stripe_total(customer) == 3
    request = _events(metered.fake)[0]
    assert request.params["identifier"] == report.identifier
    assert int(request.params["timestamp"]) == int(report.occurred_at.timestamp())
    assert send_pending().sent == 0  # nothing left, nothing sent again


class Crash(Exception):
    """The sender process dies."""


def test_a_sender_killed_after_stripes_answer_resends_the_same_identifier(metered):
    customer = metered.customer()
    for _ in range(3):
        track(customer.owner, "messages", 60)  # overage 0, 20, 60
    # The sender dies after Stripe answered but before its marks commit: Stripe holds
    # the events, the outbox still says pending.
    with pytest.raises(Crash), transaction.atomic():
        assert send_pending().sent == 2
        raise Crash
    assert OverageReport.objects.filter(status=ReportStatus.PENDING).count() == 2
    assert send_pending().sent == 2
    sent = [r.params["identifier"] for r in _events(metered.fake)]
    assert len(sent) == 4 and len(set(sent)) == 2  # resent with the same identifiers
    assert metered.stripe_total(customer) == ledger_overage(customer) == 80


def test_a_timeout_after_stripe_recorded_the_event_bills_once(metered, fake_stripe):
    customer = metered.customer()
    track(customer.owner, "messages", 107)
    stripe.default_http_client = stripe.RequestsClient(timeout=0.3)
    try:
        # Stripe answers too late: the sender gives up, Stripe has recorded the event.
        fake_stripe.inject_fault("/v1/billing/meter_events", status=None, delay=0.8)
        summary = send_pending()
        assert (summary.sent, summary.deferred) == (0, 1)
        report = OverageReport.objects.get()
        assert report.status == ReportStatus.PENDING and report.last_error
        _wait_for(lambda: metered.stripe_total(customer) == 7)  # Stripe did record it
    finally:
        stripe.default_http_client = None
    assert send_pending(now=timezone.now() + LATER).sent == 1
    assert OverageReport.objects.get().status == ReportStatus.SENT
    sent = {r.params["identifier"] for r in _events(fake_stripe)}
    assert sent == {report.identifier}
    assert metered.stripe_total(customer) == 7


def _wait_for(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_stripe_errors_and_rate_limits_back_off_and_lose_nothing(metered, fake_stripe, status):
    customer = metered.customer()
    track(customer.owner, "messages", 103)
    track(customer.owner, "messages", 2)
    fake_stripe.inject_fault("/v1/billing/meter_events", status=status, times=1)
    summary = send_pending()
    assert (summary.sent, summary.deferred) == (0, 1)
    waiting = OverageReport.objects.get(status=ReportStatus.PENDING, attempts=1)
    assert waiting.next_attempt_at > timezone.now()
    assert send_pending().sent == 1  # the other row; the failed one is backing off
    assert waiting.identifier in OverageReport.objects.filter(
        status=ReportStatus.PENDING
    ).values_list("identifier", flat=True)
    assert send_pending(now=timezone.now() + LATER).sent == 1
    assert metered.stripe_total(customer) == ledger_overage(customer) == 5


def test_a_request_stripe_refuses_is_parked_with_its_reason_and_can_be_requeued(
    metered, fake_stripe
):
    fake_stripe.allow_contract_violations = True
    customer = metered.customer()
    track(customer.owner, "messages", 101)
    fake_stripe.inject_fault(
        "/v1/billing/meter_events",
        status=400,
        body={"error": {"type": "invalid_request_error", "message": "No such customer"}},
    )
    summary = send_pending()
    assert summary.parked == 1
    report = OverageReport.objects.get()
    assert report.status == ReportStatus.PARKED
    assert "No such customer" in report.last_error
    assert requeue([report.pk]) == 1
    assert send_pending().sent == 1
    assert metered.stripe_total(customer) == 1


def test_usage_older_than_stripes_window_is_parked(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 101)
    OverageReport.objects.update(occurred_at=timezone.now() - timedelta(days=36))
    assert send_pending().parked == 1
    assert "35" in OverageReport.objects.get().last_error


def test_overage_without_an_overage_price_is_not_billed(metered):
    from kernia_billing.models import PlanFeature

    PlanFeature.objects.update(overage_price=None)
    customer = metered.customer()
    track(customer.owner, "messages", 110)
    assert send_pending().unbilled == 1
    assert OverageReport.objects.get().status == ReportStatus.UNBILLED
    assert metered.stripe_total(customer) == 0


def test_report_usage_command_once(metered, capsys):
    customer = metered.customer()
    track(customer.owner, "messages", 150)
    call_command("kernia_report_usage", "--once")
    assert "Sent 1, parked 0" in capsys.readouterr().out
    assert metered.stripe_total(customer) == 50


def test_on_commit_fast_path_sends_right_after_the_track(
    metered, settings, django_capture_on_commit_callbacks
):
    settings.KERNIA_BILLING = {"REPORT_USAGE_ON_COMMIT": True}
    customer = metered.customer()
    with django_capture_on_commit_callbacks(execute=True):
        track(customer.owner, "messages", 104)
    assert OverageReport.objects.get().status == ReportStatus.SENT
    assert metered.stripe_total(customer) == 4


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_bill_each_row_once(metered):
    skip_unless_shared_database()
    customers = [metered.customer(f"c{i}") for i in range(4)]
    for customer in customers:
        track(customer.owner, "messages", 100)
        for _ in range(25):
            track(customer.owner, "messages", 2)
    results = run_concurrently(2, lambda _: send_pending())
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.sent for r in results) >= 100
    assert not OverageReport.objects.exclude(status=ReportStatus.SENT).exists()
    for customer in customers:
        assert metered.stripe_total(customer) == ledger_overage(customer) == 50
