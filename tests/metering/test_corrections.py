"""Usage corrections: usage given back, and the billed overage with it, exactly once.

Inside Stripe's 24-hour window the meter events are cancelled (and what still stands is
sent again); outside it the customer is credited on its Stripe balance. Under a
controlled clock, so the window is crossed on purpose and on any date.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from kernia_billing import adjust_usage, check, grant, revoke, track
from kernia_billing.exceptions import (
    IdempotencyConflict,
    InvalidRequest,
    StripeUnavailable,
    UsageBelowZero,
)
from kernia_billing.models import (
    CatalogPrice,
    Entitlement,
    OverageReport,
    ReportKind,
    ReportStatus,
    UsageCorrection,
)
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.metering.sender import send_pending
from kernia_billing.services.metering.visibility import overage_this_period
from tests.metering.conftest import ledger_overage
from tests.threads import run_concurrently, skip_unless_shared_database

# Mid-month: a day's travel never crosses the monthly reset of a customer made then.
START = datetime(2027, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=True) as traveller:
        yield traveller


def _balance_transactions(fake, customer):
    return fake.store.list_balance_transactions(customer.stripe_customer_id)


def _in_stripe(metered, customer) -> int:
    return metered.stripe_total(customer)


def test_giving_back_sent_overage_inside_the_window_cancels_it_in_stripe(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 30)  # 30 over
    send_pending()
    assert _in_stripe(metered, customer) == 30
    clock.shift(timedelta(hours=2))

    result = adjust_usage(customer.owner, "messages", -30, reason="duplicate import")

    assert (result.cancelled_units, result.credited_units, result.resent_units) == (30, 0, 0)
    assert (result.balance, result.usage) == (0, 100)
    assert _in_stripe(metered, customer) == 0
    assert OverageReport.objects.get(kind=ReportKind.TRACK).status == ReportStatus.CANCELLED
    assert _balance_transactions(metered.fake, customer) == []
    assert overage_this_period(customer) == ()
    assert reconcile_meters() == []
    assert audit_ledger() == []


def test_a_partial_give_back_cancels_the_event_and_resends_what_stands(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 50)
    send_pending()
    clock.shift(timedelta(hours=1))

    result = adjust_usage(customer.owner, "messages", -20, reason="retried requests")
    assert (result.cancelled_units, result.resent_units) == (50, 30)
    assert check(customer.owner, "messages").balance == -30
    resent = OverageReport.objects.get(kind=ReportKind.CORRECTION)
    original = OverageReport.objects.get(kind=ReportKind.TRACK)
    assert resent.occurred_at == original.occurred_at  # same usage time, same period
    assert resent.identifier != original.identifier
    send_pending()
    assert _in_stripe(metered, customer) == 30
    assert reconcile_meters() == []
    assert audit_ledger() == []
    # More usage after the correction is billed as usual.
    track(customer.owner, "messages", 5)
    send_pending()
    assert _in_stripe(metered, customer) == 35
    assert reconcile_meters() == []


def test_outside_the_window_the_customer_is_credited_at_the_overage_price(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 270)
    send_pending()
    clock.shift(timedelta(hours=25))

    result = adjust_usage(
        customer.owner, "messages", -70, reason="outage retries", idempotency_key="c-1"
    )

    assert (result.cancelled_units, result.credited_units) == (0, 70)
    assert (result.credited_amount, result.currency) == (70, "usd")  # 70 x 1 cent
    [credit] = _balance_transactions(metered.fake, customer)
    assert (credit["amount"], credit["currency"]) == (-70, "usd")
    stripe_customer = metered.fake.store.retrieve("customer", customer.stripe_customer_id)
    assert stripe_customer["balance"] == -70
    # Stripe keeps its events (the customer is credited instead): the meters agree.
    assert _in_stripe(metered, customer) == 270
    assert reconcile_meters() == []
    assert audit_ledger() == []
    [overage] = overage_this_period(customer)
    assert (overage.units, overage.estimated_amount) == (200, 200)
    correction = UsageCorrection.objects.get()
    assert correction.stripe_balance_transaction_id == credit["id"]

    # The replay answers the first correction and credits nothing more.
    again = adjust_usage(
        customer.owner, "messages", -70, reason="outage retries", idempotency_key="c-1"
    )
    assert again.replayed and again.correction_id == result.correction_id
    assert len(_balance_transactions(metered.fake, customer)) == 1
    assert Entitlement.objects.get(customer=customer).usage == 300
    # A later correction does not give the credited units back twice.
    second = adjust_usage(customer.owner, "messages", -250, reason="all of it")
    assert (second.credited_units, second.credited_amount) == (200, 200)
    assert (
        stripe_customer["balance"] - 200
        == metered.fake.store.retrieve("customer", customer.stripe_customer_id)["balance"]
    )
    assert overage_this_period(customer) == ()
    assert audit_ledger() == []
    assert reconcile_meters() == []


def test_unsent_overage_is_dropped_before_stripe_sees_it(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 10)
    track(customer.owner, "messages", 10)
    result = adjust_usage(customer.owner, "messages", -15, reason="test traffic")
    assert (result.unsent_units, result.cancelled_units, result.credited_units) == (15, 0, 0)
    send_pending()
    assert _in_stripe(metered, customer) == 5
    assert ledger_overage(customer, status=ReportStatus.SENT) == 5
    assert not [r for r in metered.fake.requests if "meter_event_adjustments" in r.path]
    assert reconcile_meters() == []
    assert audit_ledger() == []


def test_giving_back_beyond_overage_returns_the_plans_grant(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 120)
    send_pending()
    result = adjust_usage(customer.owner, "messages", -50, reason="bad batch")
    assert (result.cancelled_units, result.resent_units) == (20, 0)
    assert (result.balance, result.usage) == (30, 70)
    assert _in_stripe(metered, customer) == 0
    with pytest.raises(UsageBelowZero):
        adjust_usage(customer.owner, "messages", -71, reason="too much")
    assert Entitlement.objects.get(customer=customer).usage == 70
    assert audit_ledger() == []


def test_units_drawn_from_grants_are_not_given_back_here(clock, metered):
    customer = metered.customer()
    grant(customer.owner, "messages", 50, reason="promo")
    track(customer.owner, "messages", 120)  # 100 plan, 20 from the grant
    with pytest.raises(UsageBelowZero) as refused:
        adjust_usage(customer.owner, "messages", -101, reason="x")
    assert refused.value.fields["givable"] == 100
    adjust_usage(customer.owner, "messages", -100, reason="x")
    assert check(customer.owner, "messages").balance == 130
    assert audit_ledger() == []


def test_adding_usage_is_recorded_like_a_track_and_bills_its_overage(
    clock, metered, django_user_model
):
    customer = metered.customer()
    staff = django_user_model.objects.create_user("staff", is_staff=True)
    track(customer.owner, "messages", 95)
    result = adjust_usage(customer.owner, "messages", 10, reason="missed import", adjusted_by=staff)
    assert (result.amount, result.balance, result.usage) == (10, -5, 105)
    assert UsageCorrection.objects.get().adjusted_by == staff
    send_pending()
    assert _in_stripe(metered, customer) == 5
    replay = adjust_usage(customer.owner, "messages", 10, reason="missed import")
    assert replay.replayed is False  # no key: a second correction
    assert Entitlement.objects.get(customer=customer).usage == 115
    assert audit_ledger() == []


def test_idempotent_replays_and_conflicts(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 110)
    first = adjust_usage(customer.owner, "messages", -5, reason="r", idempotency_key="k")
    again = adjust_usage(customer.owner, "messages", -5, reason="r", idempotency_key="k")
    assert again.replayed and again.correction_id == first.correction_id
    assert Entitlement.objects.get(customer=customer).usage == 105
    with pytest.raises(IdempotencyConflict):
        adjust_usage(customer.owner, "messages", -6, reason="r", idempotency_key="k")
    track(customer.owner, "messages", 1, idempotency_key="t")
    with pytest.raises(IdempotencyConflict):
        adjust_usage(customer.owner, "messages", 1, reason="r", idempotency_key="t")
    add = adjust_usage(customer.owner, "messages", 3, reason="r", idempotency_key="a")
    assert adjust_usage(customer.owner, "messages", 3, reason="r", idempotency_key="a").replayed
    assert add.usage == 109
    assert Entitlement.objects.get(customer=customer).usage == 109


@pytest.mark.parametrize(
    ("amount", "reason"),
    [(0, "r"), (True, "r"), ("5", "r"), (10**30, "r"), (-1, ""), (-1, "a\x00b"), (-1, "x" * 501)],
)
def test_bad_input_is_refused_with_nothing_written(metered, amount, reason):
    customer = metered.customer()
    track(customer.owner, "messages", 10)
    with pytest.raises(InvalidRequest):
        adjust_usage(customer.owner, "messages", amount, reason=reason)
    assert UsageCorrection.objects.count() == 0
    assert Entitlement.objects.get(customer=customer).usage == 10


def test_a_stripe_outage_rolls_the_correction_back_and_a_retry_gives_back_once(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 140)
    send_pending()
    clock.shift(timedelta(hours=1))
    metered.fake.inject_fault("/v1/billing/meter_event_adjustments", status=500, times=10)
    with pytest.raises(StripeUnavailable):
        adjust_usage(customer.owner, "messages", -40, reason="r", idempotency_key="k")
    assert UsageCorrection.objects.count() == 0
    assert Entitlement.objects.get(customer=customer).usage == 140
    metered.fake.clear_faults()
    result = adjust_usage(customer.owner, "messages", -40, reason="r", idempotency_key="k")
    assert result.cancelled_units == 40
    assert _in_stripe(metered, customer) == 0
    assert reconcile_meters() == []


def test_revoking_a_grant_changes_no_billed_overage(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 130)
    send_pending()
    promo = grant(customer.owner, "messages", 50, reason="promo")
    revoke(promo, reason="mistake")
    assert ledger_overage(customer, status=ReportStatus.SENT) == 30
    assert _in_stripe(metered, customer) == 30
    assert reconcile_meters() == []
    assert audit_ledger() == []


def test_a_cancel_stripe_refuses_for_its_window_becomes_a_credit(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 110)
    send_pending()
    # Our clock says 22 hours; Stripe received the event more than 24 hours ago.
    clock.shift(timedelta(hours=22))
    report = OverageReport.objects.get()
    metered.fake.store._meter_events[report.identifier]["received"] -= 3 * 3600
    result = adjust_usage(customer.owner, "messages", -10, reason="late")
    assert (result.cancelled_units, result.credited_units, result.credited_amount) == (0, 10, 10)
    assert _in_stripe(metered, customer) == 10
    assert reconcile_meters() == []
    assert audit_ledger() == []


def test_an_event_already_cancelled_in_stripe_counts_as_cancelled(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 110)
    send_pending()
    report = OverageReport.objects.get()
    # A rolled-back attempt cancelled it already (without our key: Stripe refuses again).
    metered.fake.store._meter_events[report.identifier]["cancelled"] = True
    result = adjust_usage(customer.owner, "messages", -10, reason="retry")
    assert result.cancelled_units == 10
    assert OverageReport.objects.get(pk=report.pk).status == ReportStatus.CANCELLED
    assert reconcile_meters() == []


@pytest.mark.django_db(transaction=True)
def test_a_correction_racing_the_sender_and_tracks_gives_back_exactly_once(metered):
    skip_unless_shared_database()
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    for _ in range(20):
        track(customer.owner, "messages", 2)  # 40 over, queued

    def work(index: int) -> object:
        if index == 0:
            return send_pending()
        if index == 1:
            return adjust_usage(customer.owner, "messages", -30, reason="race")
        return [track(customer.owner, "messages", 1) for _ in range(5)]

    results = run_concurrently(3, work)
    assert not [r for r in results if isinstance(r, Exception)], results
    send_pending()
    # Whatever the order: 40 + 5 over, 30 given back.
    assert _in_stripe(metered, customer) == 15
    [overage] = overage_this_period(customer)
    assert overage.units == 15
    assert check(customer.owner, "messages").balance == -15
    assert reconcile_meters() == []
    assert audit_ledger() == []


def test_a_credit_without_a_unit_price_is_refused_with_nothing_written(clock, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 120)
    send_pending()
    clock.shift(timedelta(hours=25))
    CatalogPrice.objects.filter(stripe_id="price_messages_overage").update(unit_amount=None)
    with pytest.raises(InvalidRequest, match="credit"):
        adjust_usage(customer.owner, "messages", -20, reason="late")
    assert UsageCorrection.objects.count() == 0
    assert Entitlement.objects.get(customer=customer).usage == 120
    assert _balance_transactions(metered.fake, customer) == []
    assert OverageReport.objects.get().credited == 0
