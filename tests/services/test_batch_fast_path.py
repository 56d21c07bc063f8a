"""Batch track's first try skips the replay lookup; a used key sends it to the full path.

Both must answer alike: the same results, the same ledger rows, the same usage.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.models import Entitlement, UsageEvent
from kernia_billing.services.usage import batch as batch_service

pytestmark = pytest.mark.django_db

LEDGER = UsageEvent._meta.db_table


def _lookups(queries: list[dict[str, Any]]) -> list[str]:
    """The statements that read the ledger (the replay lookup); inserts do not count."""
    return [
        q["sql"]
        for q in queries
        if q["sql"].lstrip().upper().startswith("SELECT") and LEDGER in q["sql"]
    ]


def test_a_batch_of_new_keys_does_not_look_them_up(user, free_plan):
    kernia_billing.check(user, "messages")
    batch = [TrackRequest("messages", 1, idempotency_key=f"new-{i}") for i in range(50)]
    with CaptureQueriesContext(connection) as ctx:
        results = kernia_billing.track_batch(user, batch)
    assert all(r.ok and not r.result.replayed for r in results)
    assert _lookups(ctx.captured_queries) == []
    assert Entitlement.objects.get().usage == 50


def test_a_used_key_rolls_the_first_try_back_and_is_answered_as_a_replay(user, free_plan):
    first = kernia_billing.track(user, "messages", 2, idempotency_key="used")
    batch = [
        TrackRequest("messages", 1, idempotency_key="a"),
        TrackRequest("messages", 2, idempotency_key="used"),  # a replay of single track
        TrackRequest("messages", 3, idempotency_key="used"),  # a conflict with it
        TrackRequest("messages", 4, idempotency_key="b"),
    ]
    with CaptureQueriesContext(connection) as ctx:
        results = kernia_billing.track_batch(user, batch)
    assert len(_lookups(ctx.captured_queries)) >= 1  # the full path looked the keys up
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[1].result.replayed and results[1].result.event_id == first.event_id
    assert results[2].error_code == "idempotency_conflict"
    # Nothing of the rolled-back try is left: 2 (single track) + 1 + 4.
    assert [r.result.usage for r in (results[0], results[3])] == [3, 7]
    assert Entitlement.objects.get().usage == 7
    assert UsageEvent.objects.count() == 3


def test_a_replay_the_balance_no_longer_covers_is_still_a_replay(user, free_plan):
    """Found by the comparison below: the first try refused the event (the balance is
    below its amount now), so no insert met its used key; a replay answers all the same."""
    first = kernia_billing.track(user, "messages", 40, idempotency_key="big")
    kernia_billing.track(user, "messages", 50)
    results = kernia_billing.track_batch(
        user, [TrackRequest("messages", 40, idempotency_key="big")]
    )
    assert results[0].ok and results[0].result.replayed
    assert results[0].result.event_id == first.event_id
    assert Entitlement.objects.get().usage == 90


def _always_look_up(monkeypatch: pytest.MonkeyPatch) -> None:
    decide = batch_service._decide_locked

    def looking_up(*args: Any, **kwargs: Any) -> Any:
        kwargs["look_up_keys"] = True
        return decide(*args, **kwargs)

    monkeypatch.setattr(batch_service, "_decide_locked", looking_up)


def _outcome(results: list[Any]) -> tuple[list[Any], list[Any], int]:
    """Answers, ledger rows and usage, with event ids as positions (the two runs draw
    different ids from the sequence: a rolled-back try spends some) and no times."""
    rows = list(UsageEvent.objects.order_by("pk"))
    position = {row.pk: n for n, row in enumerate(rows)}
    answers = [
        replace(r, result=replace(r.result, event_id=position[r.result.event_id], created_at=None))
        if r.result is not None
        else r
        for r in results
    ]
    ledger = [
        (r.amount, r.idempotency_key, bytes(r.request_fingerprint), r.properties) for r in rows
    ]
    balances = [(r.balance_after, r.usage_after) for r in rows]
    return answers, ledger + balances, Entitlement.objects.get().usage


events = st.lists(
    st.tuples(st.sampled_from([None, "k0", "k1", "k2", "k3"]), st.integers(1, 40)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(used=events, batch=events)
def test_the_fast_path_and_the_full_path_answer_alike(user, free_plan, monkeypatch, used, batch):
    """Keys used before (by an earlier batch) or not, repeated in the batch or not, with
    the same payload or another, a balance that runs out: the first try without the
    lookup (and its fallback) answers as the lookup path, with the same ledger."""
    requests = [TrackRequest("messages", amount, idempotency_key=key) for key, amount in batch]
    outcomes = []
    for look_up_first in (False, True):
        with transaction.atomic():
            kernia_billing.track_batch(
                user,
                [TrackRequest("messages", amount, idempotency_key=key) for key, amount in used],
            )
            with monkeypatch.context() as patch:
                if look_up_first:
                    _always_look_up(patch)
                results = kernia_billing.track_batch(user, requests)
            outcomes.append(_outcome(results))
            transaction.set_rollback(True)
    assert outcomes[0] == outcomes[1]
