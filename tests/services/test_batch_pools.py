"""Batch track of credit-pool features: each item decided exactly as single track decides it."""

from __future__ import annotations

import pytest
from django.db.models import Sum

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.exceptions import BillingError
from kernia_billing.models import (
    Entitlement,
    Feature,
    FeatureKind,
    OverageReport,
    Plan,
    ResetPeriod,
    UsageEvent,
)
from kernia_billing.services.customers import get_or_create_customer
from kernia_billing.services.entitlements.sync import sync_entitlements
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.services.test_concurrency import assert_only_refusals
from tests.threads import run_concurrently, skip_unless_shared_database


def _catalog(*, overage: bool = False) -> None:
    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    FeatureFactory(key="messages", credit_pool=credits, credit_cost=1)
    FeatureFactory(key="images", credit_pool=credits, credit_cost=20)
    emails = FeatureFactory(key="emails")  # a plain feature beside the pool
    plan = PlanFactory(key="ai", is_default=True)
    PlanFeatureFactory(
        plan=plan,
        feature=credits,
        included=100,
        reset_period=ResetPeriod.MONTH,
        allow_overage=overage,
    )
    PlanFeatureFactory(plan=plan, feature=emails, included=10, reset_period=ResetPeriod.MONTH)


def _owner():
    user = UserFactory()
    kernia_billing.check(user, "credits")
    return user


@pytest.fixture
def owner(db):
    _catalog()
    return _owner()


def _pool() -> Entitlement:
    return Entitlement.objects.get(feature__key="credits")


def _outcomes(results):
    return [
        (r.result.feature, r.result.amount, r.result.balance, r.result.credit_balance)
        if r.ok
        else r.error_code
        for r in results
    ]


BATCH = [
    TrackRequest("emails", 3, idempotency_key="e1"),
    TrackRequest("images", 2, idempotency_key="i1"),  # 40 credits
    TrackRequest("messages", 50, idempotency_key="m1"),  # 50 credits: 10 left
    TrackRequest("images", 1, idempotency_key="i2"),  # 20 credits: refused
    TrackRequest("emails", 8, idempotency_key="e2"),  # 7 emails left: refused
    TrackRequest("messages", 4, idempotency_key="m2"),  # 4 credits: 6 left
]


def test_a_mixed_batch_takes_what_the_pool_covers_and_refuses_the_rest(owner):
    results = kernia_billing.track_batch(owner, BATCH)

    assert _outcomes(results) == [
        ("emails", 3, 7, None),
        ("images", 2, 3, 60),
        ("messages", 50, 10, 10),
        "insufficient_balance",
        "insufficient_balance",
        ("messages", 4, 6, 6),
    ]
    assert [r.result.credit_cost for r in results if r.ok] == [None, 20, 1, 1]
    assert [r.status for r in results] == [201, 201, 201, 402, 402, 201]
    # The ledger rows are on the pool, in credits, naming the feature and its units.
    pool_rows = UsageEvent.objects.filter(feature__key="credits").order_by("pk")
    assert [(e.used_feature.key, e.units, e.amount) for e in pool_rows] == [
        ("images", 2, 40),
        ("messages", 50, 50),
        ("messages", 4, 4),
    ]
    assert (_pool().usage, Entitlement.objects.get(feature__key="emails").usage) == (94, 3)
    assert not Entitlement.objects.filter(feature__key__in=["images", "messages"]).exists()
    assert audit_ledger() == []


def test_a_refused_pool_item_carries_single_tracks_error(owner):
    batch = kernia_billing.track_batch(
        owner, [TrackRequest("messages", 90), TrackRequest("images", 1)]
    )
    refused = batch[1]

    with pytest.raises(BillingError) as single:
        kernia_billing.track(owner, "images", 1)
    error = single.value
    assert (refused.error_code, refused.error_message, refused.error_fields, refused.status) == (
        error.code,
        error.message,
        error.fields,
        error.status,
    )
    assert refused.error_fields == {"amount": 20, "balance": 10}


def test_replaying_the_batch_draws_nothing_twice(owner):
    first = kernia_billing.track_batch(owner, BATCH)
    again = kernia_billing.track_batch(owner, BATCH)

    assert [r.ok for r in again] == [r.ok for r in first]
    assert all(r.result.replayed for r in again if r.ok)
    assert [r.result.event_id for r in again if r.ok] == [r.result.event_id for r in first if r.ok]
    # A replay answers in the feature's units too, as the first answer did.
    assert _outcomes(again) == _outcomes(first)
    # Single track replays a batch's pool item, and the batch a single track's.
    single = kernia_billing.track(owner, "images", 2, idempotency_key="i1")
    assert (single.replayed, single.event_id) == (True, first[1].result.event_id)
    assert (single.amount, single.balance, single.credit_balance) == (2, 3, 60)
    kernia_billing.track(owner, "messages", 1, idempotency_key="s1")
    replay = kernia_billing.track_batch(owner, [TrackRequest("messages", 1, idempotency_key="s1")])
    assert replay[0].result.replayed and replay[0].result.credit_cost == 1
    assert _pool().usage == 95
    assert UsageEvent.objects.aggregate(total=Sum("amount"))["total"] == 3 + 95
    assert audit_ledger() == []


def test_a_key_used_twice_in_one_batch_draws_once(owner):
    results = kernia_billing.track_batch(
        owner,
        [
            TrackRequest("images", 1, idempotency_key="k"),
            TrackRequest("images", 1, idempotency_key="k"),
            TrackRequest("images", 2, idempotency_key="k"),  # another payload
        ],
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[1].result.replayed and results[1].result.event_id == results[0].result.event_id
    assert results[2].error_code == "idempotency_conflict"
    assert _pool().usage == 20


def test_the_features_own_entitlement_is_used_first(owner):
    PlanFeatureFactory(
        plan=Plan.objects.get(key="ai"),
        feature=Feature.objects.get(key="images"),
        included=1,
        reset_period=ResetPeriod.MONTH,
    )
    sync_entitlements(get_or_create_customer(owner))

    results = kernia_billing.track_batch(
        owner, [TrackRequest("images", 1), TrackRequest("images", 1), TrackRequest("images", 5)]
    )

    assert results[0].ok and results[0].result.credit_cost is None  # its own grant
    assert (results[1].result.credit_cost, results[1].result.credit_balance) == (20, 80)
    assert results[2].error_code == "insufficient_balance"  # neither covers 5 (100 credits)
    assert Entitlement.objects.get(feature__key="images").usage == 1
    assert _pool().usage == 20
    assert audit_ledger() == []


def test_pool_overage_goes_to_the_outbox_as_single_track_puts_it(db):
    _catalog(overage=True)
    by_batch, by_track = _owner(), _owner()

    kernia_billing.track_batch(by_batch, [TrackRequest("messages", 90), TrackRequest("images", 1)])
    kernia_billing.track(by_track, "messages", 90)
    kernia_billing.track(by_track, "images", 1)

    reports = {
        customer: list(
            OverageReport.objects.filter(customer__owner_id=str(customer.pk)).values_list(
                "feature__key", "value"
            )
        )
        for customer in (by_batch, by_track)
    }
    assert reports[by_batch] == reports[by_track] == [("credits", 10)]
    assert audit_ledger() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_never_take_the_pool_below_zero():
    skip_unless_shared_database()
    _catalog()
    owner = _owner()
    threads = 8

    def work(i: int):
        return kernia_billing.track_batch(
            owner,
            [
                TrackRequest("images", 1, idempotency_key=f"img-{i}"),  # 20 credits each
                TrackRequest("messages", 7, idempotency_key="shared"),  # the same in all
                TrackRequest("emails", 1),
            ],
        )

    results = run_concurrently(threads, work)

    assert_only_refusals(results)
    batches = [r for r in results if not isinstance(r, Exception)]
    assert len(batches) == threads
    accepted = [item for batch in batches for item in batch if item.ok]
    pool = _pool()
    credits = UsageEvent.objects.filter(feature__key="credits").aggregate(total=Sum("amount"))
    assert pool.usage == credits["total"] <= pool.included == 100
    # The shared key was drawn once; the other batches were answered with its replay.
    assert UsageEvent.objects.filter(idempotency_key="shared").count() == 1
    shared = [b[1] for b in batches]
    assert all(item.ok for item in shared)
    assert sum(not item.result.replayed for item in shared) == 1
    images = UsageEvent.objects.filter(used_feature__key="images").count()
    assert images == (100 - 7) // 20  # exactly what the pool covered
    assert len([i for i in accepted if i.result.feature == "images"]) == images
    assert Entitlement.objects.get(feature__key="emails").usage == threads
    assert audit_ledger() == []
