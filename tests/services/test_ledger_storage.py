"""The compact ledger: the key index over a digest, short fingerprints, and what stays exact."""

from __future__ import annotations

import hashlib
import importlib
import json
import re

import pytest
from django.apps import apps
from django.db import IntegrityError, connection, transaction

import kernia_billing
from kernia_billing.exceptions import IdempotencyConflict
from kernia_billing.models import Entitlement, UsageEvent
from kernia_billing.services.usage.ledger import (
    _keyed_events_sql,
    _pair_arrays,
    keyed_events,
    keyed_events_by_pair,
)
from kernia_billing.types import TrackRequest
from tests.factories import UserFactory
from tests.threads import run_concurrently, skip_unless_shared_database


@pytest.mark.django_db
def test_a_key_is_one_customers_only_and_a_replay_or_conflict_stays_exact(free_plan, user):
    other = UserFactory()
    first = kernia_billing.track(user, "messages", 2, idempotency_key="order-1")
    # The same key of another customer is another event.
    theirs = kernia_billing.track(other, "messages", 2, idempotency_key="order-1")
    assert theirs.event_id != first.event_id and not theirs.replayed
    again = kernia_billing.track(user, "messages", 2, idempotency_key="order-1")
    assert (again.event_id, again.replayed) == (first.event_id, True)
    with pytest.raises(IdempotencyConflict):
        kernia_billing.track(user, "messages", 3, idempotency_key="order-1")
    batch = kernia_billing.track_batch(
        user,
        [
            TrackRequest("messages", 2, idempotency_key="order-1"),
            TrackRequest("messages", 5, idempotency_key="order-1"),
            TrackRequest("messages", 1, idempotency_key="order-2"),
        ],
    )
    assert [item.status for item in batch] == [201, 409, 201]
    assert batch[0].result.event_id == first.event_id and batch[0].result.replayed
    assert UsageEvent.objects.count() == 3
    assert Entitlement.objects.get(customer__owner_id=str(user.pk)).usage == 3


@pytest.mark.django_db
def test_the_database_itself_refuses_a_second_row_of_a_key(free_plan, user):
    kernia_billing.track(user, "messages", 1, idempotency_key="order-1")
    event = UsageEvent.objects.get()
    event.pk = None
    with pytest.raises(IntegrityError), transaction.atomic():
        event.save()
    event.idempotency_key = "order-2"
    event.save()  # another key is another row
    event.pk, event.idempotency_key = None, None
    event.save()
    event.pk = None
    event.save()  # rows without a key never collide
    assert UsageEvent.objects.count() == 4


@pytest.mark.django_db
def test_only_a_keyed_event_keeps_its_16_byte_fingerprint_and_no_properties_are_null(
    free_plan, user
):
    kernia_billing.track(user, "messages", 1, idempotency_key="order-1")
    kernia_billing.track(user, "messages", 1, properties={"page": "/"})
    kernia_billing.track_batch(user, [TrackRequest("messages", 1), TrackRequest("messages", 1)])
    rows = UsageEvent.objects.order_by("id")
    assert [(e.idempotency_key, len(bytes(e.request_fingerprint))) for e in rows] == [
        ("order-1", 16),
        (None, 0),
        (None, 0),
        (None, 0),
    ]
    assert [e.properties for e in rows] == [None, {"page": "/"}, None, None]


@pytest.mark.django_db
def test_the_migration_shortens_the_rows_of_an_existing_ledger(free_plan, user):
    kernia_billing.track(user, "messages", 2, idempotency_key="order-1")
    kernia_billing.track(user, "messages", 1)
    keyed = UsageEvent.objects.get(idempotency_key="order-1")
    short = bytes(keyed.request_fingerprint)
    # As 0006 left them: 32-byte fingerprints, on keyless rows too.
    UsageEvent.objects.filter(pk=keyed.pk).update(request_fingerprint=short + b"\x01" * 16)
    UsageEvent.objects.filter(idempotency_key=None).update(request_fingerprint=b"\x02" * 32)
    UsageEvent.objects.update(properties={})

    migration = importlib.import_module("kernia_billing.migrations.0010_ledger_storage")
    migration.shorten_rows(apps, connection.schema_editor())

    assert bytes(UsageEvent.objects.get(pk=keyed.pk).request_fingerprint) == short
    assert bytes(UsageEvent.objects.get(idempotency_key=None).request_fingerprint) == b""
    assert list(UsageEvent.objects.values_list("properties", flat=True)) == [None, None]
    replay = kernia_billing.track(user, "messages", 2, idempotency_key="order-1")
    assert (replay.event_id, replay.replayed) == (keyed.pk, True)


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_uses_of_a_key_with_different_payloads_record_one(free_plan, user):
    skip_unless_shared_database()
    kernia_billing.check(user, "messages")  # the customer and its entitlement exist
    results = run_concurrently(
        16,
        lambda i: kernia_billing.track(user, "messages", 1 + i % 2, idempotency_key="order-7"),
    )
    unexpected = [r for r in results if isinstance(r, Exception)]
    unexpected = [r for r in unexpected if not isinstance(r, IdempotencyConflict)]
    assert not unexpected, unexpected[:3]
    event = UsageEvent.objects.get()
    accepted = [r for r in results if not isinstance(r, Exception)]
    # Every answer is the one event (first or replay) or a conflict of the other payload.
    assert {r.event_id for r in accepted} == {event.pk}
    assert sum(1 for r in accepted if not r.replayed) == 1
    assert all(r.amount == event.amount for r in accepted)
    conflicts = [r for r in results if isinstance(r, IdempotencyConflict)]
    assert len(accepted) + len(conflicts) == 16
    assert len(conflicts) == sum(1 for i in range(16) if 1 + i % 2 != event.amount)
    assert Entitlement.objects.get().usage == event.amount


@pytest.mark.postgres
@pytest.mark.django_db
def test_replay_lookups_of_one_key_and_of_a_batch_read_the_digest_index(free_plan, user):
    """Neither lookup may scan the customer's history: the digest index is the only one
    that holds the key (a plan that falls back reads every row of a busy customer)."""
    customer_id = kernia_billing.track(user, "messages", 1, idempotency_key="a").event_id
    customer_id = UsageEvent.objects.get(pk=customer_id).customer_id
    pairs = {(customer_id, "a"), (customer_id, "b")}
    with connection.cursor() as cursor:
        # A busy customer (5,000 keyless rows, analyzed): on a tiny table the planner's pick
        # between this index and customer + feature + time is a tie that earlier tests'
        # statistics decided either way.
        cursor.execute(
            "INSERT INTO kernia_billing_usageevent (customer_id, feature_id, amount, "
            "request_fingerprint, created_at, balance_after, usage_after, from_grants) "
            "SELECT customer_id, feature_id, 1, ''::bytea, created_at - i * interval '1 second', "
            "balance_after, usage_after, 0 FROM kernia_billing_usageevent, "
            "generate_series(1, 5000) i WHERE customer_id = %s",
            [customer_id],
        )
        cursor.execute("ANALYZE kernia_billing_usageevent")
        cursor.execute("SET LOCAL enable_seqscan = off")
        one = keyed_events([(customer_id, "a")]).explain()
        cursor.execute("EXPLAIN " + _keyed_events_sql(), _pair_arrays(pairs))
        many = "\n".join(row[0] for row in cursor.fetchall())
    for plan in (one, many):
        assert "kernia_billing_usage_idempotency_key" in plan, plan
        assert re.search(r"Index Cond: \(+md5\(", plan), plan  # searched by digest, not walked


@pytest.mark.django_db
def test_a_row_a_server_of_the_former_release_wrote_is_still_a_replay(free_plan, user):
    """During a rolling deploy a server still on the former release writes the whole
    32-byte SHA-256 after 0010 shortened the rows: its retries stay replays everywhere."""
    kernia_billing.track(user, "messages", 2, idempotency_key="order-1")
    payload = json.dumps(["messages", 2, {}], sort_keys=True, separators=(",", ":"))
    UsageEvent.objects.update(request_fingerprint=hashlib.sha256(payload.encode()).digest())

    assert kernia_billing.track(user, "messages", 2, idempotency_key="order-1").replayed
    batch = kernia_billing.track_batch(
        user, [TrackRequest("messages", 2, idempotency_key="order-1")]
    )
    assert batch[0].ok and batch[0].result.replayed
    with pytest.raises(IdempotencyConflict):
        kernia_billing.track(user, "messages", 3, idempotency_key="order-1")
    assert UsageEvent.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_lookup_of_keys_of_a_thousand_customers_is_one_flat_query(free_plan, user):
    """A staff batch may name many owners: one OR per customer nested past SQLite's limit
    ("Expression tree is too large"), a 500."""
    first = kernia_billing.track(user, "messages", 1, idempotency_key="k7")
    customer_id = UsageEvent.objects.get(pk=first.event_id).customer_id
    pairs = [(customer_id + n, f"k{n}") for n in range(1, 1000)] + [(customer_id, "k7")]

    found = keyed_events_by_pair(pairs)

    assert list(found) == [(customer_id, "k7")]
    assert found[(customer_id, "k7")].pk == first.event_id
