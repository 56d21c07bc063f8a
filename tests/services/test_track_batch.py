"""Batch track: each event answered as single track would, exact and idempotent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.exceptions import InvalidRequest
from kernia_billing.models import Entitlement, FeatureKind, ResetPeriod, UsageEvent, UsageRollup
from kernia_billing.services.usage.ledger import NewEvent, insert_events
from tests.factories import FeatureFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_each_event_answered_in_order_until_the_balance_runs_out(user, free_plan):
    results = kernia_billing.track_batch(user, [TrackRequest("messages", 30) for _ in range(4)])
    assert [r.ok for r in results] == [True, True, True, False]
    assert [r.result.balance for r in results[:3]] == [70, 40, 10]
    assert (results[3].error_code, results[3].status) == ("insufficient_balance", 402)
    assert Entitlement.objects.get().usage == 90
    assert UsageEvent.objects.aggregate(total=Sum("amount"))["total"] == 90


def test_mixed_features_errors_and_idempotency(user, free_plan):
    seats = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    sso = FeatureFactory(key="sso", kind=FeatureKind.BOOLEAN)
    PlanFeatureFactory(plan=free_plan, feature=seats, included=2, reset_period=ResetPeriod.NONE)
    PlanFeatureFactory(plan=free_plan, feature=sso, included=0, reset_period=ResetPeriod.NONE)
    kernia_billing.track(user, "messages", 5, idempotency_key="earlier")

    results = kernia_billing.track_batch(
        user,
        [
            TrackRequest("messages", 5, idempotency_key="earlier"),  # replay of single track
            TrackRequest("messages", 6, idempotency_key="earlier"),  # conflict
            TrackRequest("messages", 1, idempotency_key="b1"),
            TrackRequest("messages", 1, idempotency_key="b1"),  # replay within the batch
            TrackRequest("seats", 2),
            TrackRequest("seats", -3),  # below zero
            TrackRequest("sso", 1),  # boolean
            TrackRequest("nope", 1),  # unknown feature
            TrackRequest("messages", 0),  # bad amount
        ],
    )
    codes = [
        r.error_code if not r.ok else ("replayed" if r.result.replayed else "ok") for r in results
    ]
    assert codes == [
        "replayed",
        "idempotency_conflict",
        "ok",
        "replayed",
        "ok",
        "usage_below_zero",
        "not_trackable",
        "unknown_feature",
        "invalid_request",
    ]
    assert results[3].result.event_id == results[2].result.event_id
    assert Entitlement.objects.get(feature__key="messages").usage == 6
    assert UsageEvent.objects.filter(idempotency_key="b1").count() == 1


def test_replaying_a_whole_batch_counts_once(user, free_plan):
    batch = [TrackRequest("messages", 1, idempotency_key=f"k{i}") for i in range(20)]
    first = kernia_billing.track_batch(user, batch)
    again = kernia_billing.track_batch(user, batch)
    assert all(r.ok and not r.result.replayed for r in first)
    assert all(r.ok and r.result.replayed for r in again)
    assert Entitlement.objects.get().usage == 20


def test_every_answer_names_the_ledger_row_that_holds_its_event(user, free_plan):
    """The set-based insert maps each new id to its own event: each answer's eventId is
    the row with that event's amount, key, properties and balances, in request order."""
    kernia_billing.grant(user, "messages", 7, reason="covers the overflow")
    odd_keys = ["plain", "quote ' and \\ backslash", "{brace,comma}", 'dq "x"', "ünï", "NULL"]
    batch = [
        TrackRequest(
            "messages",
            index % 5 + 1,
            idempotency_key=odd_keys[index] if index < len(odd_keys) else f"k{index}",
            properties={"n": index, "tags": ["a", {"b": None}], "s": "x'\"y"} if index % 2 else {},
        )
        for index in range(40)
    ]
    results = kernia_billing.track_batch(user, batch)

    accepted = [(request, r.result) for request, r in zip(batch, results, strict=True) if r.ok]
    assert len(accepted) > 30 and not all(r.ok for r in results)  # ran out: the grant drew
    rows = UsageEvent.objects.in_bulk([result.event_id for _, result in accepted])
    assert len(rows) == len(accepted)
    for request, result in accepted:
        row = rows[result.event_id]
        # No properties are stored as NULL (the API answers {}).
        assert (row.amount, row.idempotency_key, row.properties or {}) == (
            request.amount,
            request.idempotency_key,
            request.properties,
        )
        assert (row.balance_after, row.usage_after) == (result.balance, result.usage)
        assert row.created_at == result.created_at
    ids = [result.event_id for _, result in accepted]
    assert ids == sorted(ids)  # the ledger's order is the request's order
    drew = [rows[i] for i in ids if rows[i].from_grants]
    total = sum(request.amount for request, _ in accepted)
    assert sum(row.from_grants for row in drew) == total - 100  # beyond the plan's 100
    assert drew and all(row.draws for row in drew)
    again = kernia_billing.track_batch(user, batch)
    assert [r.result.event_id for r in again if r.ok] == ids
    assert all(r.result.replayed for r in again if r.ok)


def test_staff_batch_for_several_customers(free_plan):
    alice, bob = UserFactory(), UserFactory()
    results = kernia_billing.track_batch(
        None,
        [TrackRequest("messages", 10, owner=alice), TrackRequest("messages", 20, owner=bob)],
    )
    assert [r.result.usage for r in results] == [10, 20]


def test_batch_costs_few_statements(user, free_plan):
    kernia_billing.check(user, "messages")
    with CaptureQueriesContext(connection) as ctx:
        results = kernia_billing.track_batch(
            user, [TrackRequest("messages", 1) for _ in range(100)]
        )
    assert all(r.ok for r in results)
    assert len(ctx.captured_queries) <= 8


def test_batch_size_limit(user, free_plan, settings):
    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, "MAX_BATCH_SIZE": 3}
    with pytest.raises(InvalidRequest):
        kernia_billing.track_batch(user, [TrackRequest("messages") for _ in range(4)])


def test_a_key_refused_then_accepted_in_one_batch_is_replayed_afterwards(user, free_plan):
    seats = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    PlanFeatureFactory(plan=free_plan, feature=seats, included=2, reset_period=ResetPeriod.NONE)
    kernia_billing.track(user, "seats", 2)
    results = kernia_billing.track_batch(
        user,
        [
            TrackRequest("seats", 1, idempotency_key="K"),  # refused: no seat left
            TrackRequest("seats", -1),
            TrackRequest("seats", 1, idempotency_key="K"),  # now fits: accepted
            TrackRequest("seats", 1, idempotency_key="K"),  # a replay of the accepted one
        ],
    )
    assert [r.ok for r in results] == [False, True, True, True]
    assert results[3].result.replayed is True
    assert results[3].result.event_id == results[2].result.event_id
    assert Entitlement.objects.get(feature=seats).usage == 2
    assert UsageEvent.objects.filter(idempotency_key="K").count() == 1


def test_events_before_the_current_period_are_refused_and_not_counted(user, free_plan):
    """A batch at a moment before the entitlement's period must not count in that period.

    Single track refuses such a moment; the batch used to add it to the current period's
    usage with a ledger row dated before the period (the ledger audit then drifts).
    """
    from kernia_billing.services.ledger_audit import audit_ledger

    kernia_billing.track(user, "messages", 5)
    period_start = Entitlement.objects.get().period_start
    earlier = period_start - timedelta(seconds=1)

    results = kernia_billing.track_batch(user, [TrackRequest("messages", 3)], now=earlier)

    assert [(r.ok, r.error_code, r.status) for r in results] == [(False, "invalid_request", 400)]
    assert Entitlement.objects.get().usage == 5
    assert UsageEvent.objects.count() == 1
    assert audit_ledger() == []


def test_rows_that_share_every_value_are_still_one_row_each(user, free_plan, messages):
    """The set-based insert sends a value all rows share once; rows that share all of
    them (no key, same balances) still become one ledger row and one rollup count each."""
    kernia_billing.check(user, "messages")
    entitlement = Entitlement.objects.get()
    moment = timezone.now()
    twins = [
        NewEvent(
            customer_id=entitlement.customer_id,
            feature_id=messages.pk,
            amount=2,
            idempotency_key=None,
            request_fingerprint=b"\x00\x01",
            properties={"same": ["x", None]},
            created_at=moment,
            balance_after=98,
            usage_after=2,
            from_grants=0,
            draws=None,
            used_feature_id=None,
            units=None,
        )
        for _ in range(3)
    ]
    with transaction.atomic():
        insert_events(twins)

    ids = [event.pk for event in twins]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    rows = UsageEvent.objects.filter(pk__in=ids)
    assert [(r.amount, r.properties, bytes(r.request_fingerprint)) for r in rows] == [
        (2, {"same": ["x", None]}, b"\x00\x01")
    ] * 3
    rollup = UsageRollup.objects.get(customer_id=entitlement.customer_id)
    assert (rollup.amount, rollup.events) == (6, 3)
