"""track's fast path (services/usage/fast_track.py): what it writes is what the full path
writes, and on PostgreSQL it is one statement in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing.exceptions import IdempotencyConflict
from kernia_billing.models import Entitlement, OverageReport, UsageEvent, UsageRollup
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.metering.outbox import identifier_for_event
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

BASE = datetime(2030, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(BASE, tick=False) as traveller:
        yield traveller


@pytest.fixture
def plan(db):
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=5, allow_overage=True)
    return plan


def _owner() -> Any:
    user = UserFactory()
    kernia_billing.check(user, "messages")  # first use (customer, entitlement) is not fast
    return user


def _statements(work) -> list[str]:
    """The statements ``work`` sent, without the savepoints of the test's transaction."""
    with CaptureQueriesContext(connection) as captured:
        work()
    return [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]


def _written(event_id: int) -> dict[str, Any]:
    """What a track wrote, without the ids that tell two customers' rows apart."""
    event = UsageEvent.objects.get(pk=event_id)
    entitlement = Entitlement.objects.get(customer=event.customer, feature=event.feature)
    rollup = UsageRollup.objects.get(
        customer=event.customer, feature=event.feature, day=event.created_at.date()
    )
    report = OverageReport.objects.filter(usage_event=event).first()
    return {
        "event": model_to_dict(event, exclude=["id", "customer"]),
        "entitlement": model_to_dict(entitlement, fields=["usage", "updated_at"]),
        "rollup": model_to_dict(rollup, fields=["day", "amount", "events"]),
        "outbox": {
            **model_to_dict(report, exclude=["id", "customer", "usage_event", "identifier"]),
            "created_at": report.created_at is not None,
            "identifier": report.identifier == identifier_for_event(event.pk),
        }
        if report
        else None,
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "key", "properties"),
    [
        (2, None, None),  # no key: no fingerprint kept, properties a NULL
        (3, "k-1", {"channel": "sms", "n": [1, 2]}),
        (7, "k-2", {}),  # past the 5 included: overage, its outbox row
    ],
)
def test_the_fast_path_writes_what_the_full_path_writes(plan, clock, amount, key, properties):
    fast_owner, full_owner = _owner(), _owner()

    sent = _statements(
        lambda: kernia_billing.track(
            fast_owner, "messages", amount, idempotency_key=key, properties=properties
        )
    )
    fast = UsageEvent.objects.filter(customer__owner_id=str(fast_owner.pk)).get()
    # An explicit clock takes the full path (load, reset check, deduct, insert).
    full_result = kernia_billing.track(
        full_owner, "messages", amount, idempotency_key=key, properties=properties, now=BASE
    )

    overage = 1 if amount > 5 else 0  # the outbox row of the overage (PostgreSQL: in it)
    assert len(sent) == (1 if connection.vendor == "postgresql" else 3 + overage)
    assert _written(fast.pk) == _written(full_result.event_id)
    if key is not None:  # a replay of the fast path's row answers from it
        replayed = kernia_billing.track(
            fast_owner, "messages", amount, idempotency_key=key, properties=properties
        )
        assert (replayed.event_id, replayed.replayed, replayed.balance) == (
            fast.pk,
            True,
            5 - amount,
        )
    fast_result = kernia_billing.track(full_owner, "messages", 1)  # answers alike too
    assert fast_result.balance == full_result.balance - 1
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgresql_fast_track_is_one_statement_its_own_transaction(plan):
    owner = _owner()
    with CaptureQueriesContext(connection) as captured:
        result = kernia_billing.track(owner, "messages", 2)
    # Outside any transaction: the one statement, in autocommit; nothing else.
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["WITH"]
    sql = captured.captured_queries[0]["sql"]
    assert "UPDATE" in sql and sql.count("INSERT INTO") == 3  # ledger row, rollup, outbox
    # The entitlement, its ledger row and its rollup were written by one transaction.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT xmin::text FROM {Entitlement._meta.db_table} e "
            "WHERE e.customer_id = u.customer_id AND e.feature_id = u.feature_id), "
            f"u.xmin::text, (SELECT xmin::text FROM {UsageRollup._meta.db_table} r "
            "WHERE r.customer_id = u.customer_id AND r.feature_id = u.feature_id) "
            f"FROM {UsageEvent._meta.db_table} u WHERE u.id = %s",
            [result.event_id],
        )
        entitlement_xid, event_xid, rollup_xid = cursor.fetchone()
    assert entitlement_xid == event_xid == rollup_xid
    assert (result.usage, result.balance) == (2, 3)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_first_track_after_a_boundary_resets_then_takes_the_one_statement(plan, clock):
    owner = _owner()
    kernia_billing.track(owner, "messages", 4)
    clock.move_to(datetime(2030, 6, 10, 12, 0, tzinfo=UTC))  # the next monthly period
    with CaptureQueriesContext(connection) as captured:
        result = kernia_billing.track(owner, "messages", 2)
    # The one statement refuses the due period (nothing written); the row is read; the
    # lazy reset and the deduction are one UPDATE of the statement in the new period: 2
    # queries more than a track, each in autocommit, and one commit that writes.
    queries = [q["sql"].split()[0] for q in captured.captured_queries]
    assert queries == ["WITH", "SELECT", "WITH"]
    assert "period_start = " in captured.captured_queries[2]["sql"]
    assert (result.usage, result.balance) == (2, 3)
    entitlement = Entitlement.objects.get()
    assert (entitlement.period_start, entitlement.next_reset_at) == (
        datetime(2030, 6, 10, 12, 0, tzinfo=UTC),
        datetime(2030, 7, 10, 12, 0, tzinfo=UTC),
    )
    assert audit_ledger() == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "key"),
    [(2, None), (3, "k-1"), (7, "k-2")],  # 7: past the 5 included, its outbox row
)
def test_the_first_track_after_a_boundary_writes_what_the_full_path_writes(
    plan, clock, amount, key
):
    fast_owner, full_owner = _owner(), _owner()
    kernia_billing.track(fast_owner, "messages", 4)
    kernia_billing.track(full_owner, "messages", 4)
    later = datetime(2030, 6, 10, 12, 0, tzinfo=UTC)
    clock.move_to(later)
    fast_result = kernia_billing.track(fast_owner, "messages", amount, idempotency_key=key)
    full_result = kernia_billing.track(
        full_owner, "messages", amount, idempotency_key=key, now=later
    )
    assert _written(fast_result.event_id) == _written(full_result.event_id)
    fast_row = Entitlement.objects.get(customer__owner_id=str(fast_owner.pk))
    full_row = Entitlement.objects.get(customer__owner_id=str(full_owner.pk))
    assert model_to_dict(fast_row, fields=["period_start", "next_reset_at", "grant_usage"]) == (
        model_to_dict(full_row, fields=["period_start", "next_reset_at", "grant_usage"])
    )
    assert (fast_result.usage, fast_result.balance) == (amount, 5 - amount)
    assert audit_ledger() == []


@pytest.mark.django_db
def test_keyed_tracks_at_a_boundary_count_once(plan, clock):
    owner = _owner()
    first = kernia_billing.track(owner, "messages", 4, idempotency_key="k-before")
    clock.move_to(datetime(2030, 6, 10, 12, 0, tzinfo=UTC))
    # A retry of the old period's key after the boundary is its replay, nothing counted.
    replay = kernia_billing.track(owner, "messages", 4, idempotency_key="k-before")
    assert (replay.replayed, replay.event_id) == (True, first.event_id)
    # The first new key of the new period resets and deducts once.
    fresh = kernia_billing.track(owner, "messages", 2, idempotency_key="k-after")
    again = kernia_billing.track(owner, "messages", 2, idempotency_key="k-after")
    assert (fresh.usage, fresh.balance, again.replayed) == (2, 3, True)
    assert kernia_billing.check(owner, "messages").usage == 2
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_overage_track_in_autocommit_writes_its_outbox_row_in_the_statement(plan):
    """Outside a transaction the one statement is the track's own: its outbox row too."""
    owner = _owner()
    kernia_billing.track(owner, "messages", 4)
    with CaptureQueriesContext(connection) as captured:
        result = kernia_billing.track(owner, "messages", 3)  # 1 within the 5, 2 beyond
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["WITH"]
    report = OverageReport.objects.get()
    assert (report.usage_event_id, report.value, report.status) == (result.event_id, 2, "pending")
    assert report.identifier == identifier_for_event(result.event_id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT u.xmin::text, o.xmin::text FROM {UsageEvent._meta.db_table} u "
            f"JOIN {OverageReport._meta.db_table} o ON o.usage_event_id = u.id"
        )
        event_xid, report_xid = cursor.fetchone()
    assert event_xid == report_xid  # one transaction
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_replay_in_autocommit_leaves_the_connection_usable(plan):
    owner = _owner()
    first = kernia_billing.track(owner, "messages", 2, idempotency_key="once")
    replay = kernia_billing.track(owner, "messages", 2, idempotency_key="once")
    with pytest.raises(IdempotencyConflict):
        kernia_billing.track(owner, "messages", 3, idempotency_key="once")
    after = kernia_billing.track(owner, "messages", 1)
    assert (replay.replayed, replay.event_id) == (True, first.event_id)
    assert (after.usage, UsageEvent.objects.count()) == (3, 2)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_balance_at_the_end_of_bigint_does_not_overflow_the_outbox_part(db):
    """The outbox part works out the balance before in numeric (it may pass bigint)."""
    feature = FeatureFactory(key="tokens")
    plan = PlanFactory(key="huge", is_default=True)
    PlanFeatureFactory(plan=plan, feature=feature, included=2**63 - 1)
    owner = UserFactory()
    kernia_billing.check(owner, "tokens")
    kernia_billing.grant(owner, "tokens", 5, reason="goodwill")
    result = kernia_billing.track(owner, "tokens", 5)  # the balance before: past bigint's end
    assert result.balance == 2**63 - 1 and not OverageReport.objects.exists()
