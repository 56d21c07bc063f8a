"""The hot path's statements are prepared where the connection prepares (PostgreSQL with
psycopg's ``prepare_threshold``, as the example project sets it), and answer the same
with the connection's client-side binding when it does not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import time_machine
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance
from kernia_billing.models import Entitlement, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.prepared import prepares, statement_cursor
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.postgres

BASE = datetime(2030, 5, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def owner(db):
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=100)
    user = UserFactory()
    with time_machine.travel(BASE, tick=False):
        kernia_billing.check(user, "messages")  # first use: customer and entitlement
        yield user


def _threshold(value: int | None) -> Iterator[None]:
    connection.ensure_connection()
    raw = connection.connection
    threshold = raw.prepare_threshold
    raw.prepare_threshold = value
    try:
        yield
    finally:
        raw.prepare_threshold = threshold


@pytest.fixture
def client_binding() -> Iterator[None]:
    """The connection as Django makes it by default: no prepared statements."""
    yield from _threshold(None)


@pytest.fixture
def preparing() -> Iterator[None]:
    """The connection as the example project makes it (DATABASE_PREPARE_THRESHOLD=5)."""
    yield from _threshold(5)


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def _answers(user) -> list[tuple]:
    checks = [kernia_billing.check(user, "messages") for _ in range(6)]
    tracks = [kernia_billing.track(user, "messages", 1) for _ in range(6)]
    assert all(c.next_reset_at.tzinfo is UTC for c in checks)  # as Django's loader gives
    return [(c.allowed, c.balance, c.next_reset_at) for c in checks] + [
        (t.balance, t.usage, t.created_at) for t in tracks
    ]


@pytest.mark.skipif(
    os.environ.get("DATABASE_PREPARE_THRESHOLD", "5") == "none", reason="turned off by hand"
)
def test_the_test_settings_prepare_on_postgresql(db):
    # The PostgreSQL leg runs the whole suite with the hot statements prepared.
    connection.ensure_connection()
    assert prepares()


def test_check_and_track_are_planned_once_per_connection(owner, preparing):
    _answers(owner)  # more executions than psycopg's threshold (5)
    statements = _prepared_statements()
    assert any(s.startswith('SELECT e."id", e."customer_id"') for s in statements)
    assert any(s.startswith("WITH d AS (UPDATE") for s in statements)


def test_without_prepared_statements_the_answers_are_the_same(owner, client_binding):
    assert not prepares()
    before = _prepared_statements()
    with time_machine.travel(BASE, tick=False):
        client = _answers(owner)
    assert _prepared_statements() == before  # nothing prepared: Django's own cursor

    other = UserFactory()
    connection.connection.prepare_threshold = 5
    with time_machine.travel(BASE, tick=False):
        kernia_billing.check(other, "messages")
        assert _answers(other) == client


def test_statements_stay_visible_to_django_and_errors_stay_django_errors(owner):
    # Query logging (debug toolbars, assertNumQueries) and Django's exception classes
    # pass through the server-binding cursor.
    with CaptureQueriesContext(connection) as captured:
        kernia_billing.check(owner, "messages")
    assert any('FROM "kernia_billing_entitlement" e' in q["sql"] for q in captured)

    event = kernia_billing.track(owner, "messages", 1, idempotency_key="k-1")
    with pytest.raises(IntegrityError), transaction.atomic(), statement_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {UsageEvent._meta.db_table} (id, customer_id, feature_id, amount, "
            "created_at, balance_after, usage_after, from_grants) "
            "SELECT id, customer_id, feature_id, amount, created_at, balance_after, "
            f"usage_after, from_grants FROM {UsageEvent._meta.db_table} WHERE id = %s",
            [event.event_id],
        )
    # The replay is answered (the fast path's IntegrityError went to the full path).
    assert kernia_billing.track(owner, "messages", 1, idempotency_key="k-1").replayed


@pytest.mark.django_db(transaction=True)  # the track's own transaction, not a savepoint
def test_a_refused_track_keeps_the_prepared_statements(owner, preparing):
    # A ROLLBACK (of a savepoint too) drops them (psycopg); a refusal writes nothing and
    # so commits its empty transaction instead.
    _answers(owner)
    prepared = _prepared_statements()
    events = UsageEvent.objects.count()
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(owner, "messages", 1_000)
    check = kernia_billing.check(owner, "messages")
    assert _prepared_statements() == prepared
    assert (UsageEvent.objects.count(), check.usage) == (events, 6)  # nothing written
    assert audit_ledger() == []


def test_a_statement_whose_text_varies_binds_on_the_server_unprepared(db, preparing):
    for _ in range(8):
        with statement_cursor(prepare=False) as cursor:
            assert not isinstance(cursor.cursor, psycopg.ClientCursor)  # bound on the server
            cursor.execute("SELECT count(*) FROM unnest(%s::bigint[]) AS t(n)", [[1, 2, 3]])
            assert cursor.fetchone() == (3,)
    assert not any("unnest($1::bigint[])" in s for s in _prepared_statements())
    for _ in range(8):
        with statement_cursor() as cursor:
            cursor.execute("SELECT count(*) FROM unnest(%s::bigint[]) AS t(n)", [[1, 2, 3]])
    assert any("unnest($1::bigint[])" in s for s in _prepared_statements())


@pytest.mark.django_db(transaction=True)
def test_a_refusal_inside_a_callers_transaction_holds_no_row_lock():
    # The refused draw locked the entitlement; inside the caller's transaction its
    # savepoint is rolled back, so another connection may lock the row while the
    # caller's transaction is still open (a credit pool's row may be taken next).
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=3)
    user = UserFactory()
    kernia_billing.check(user, "messages")
    entitlement = Entitlement.objects.get(customer__owner_id=str(user.pk))
    settings_dict = connection.settings_dict
    other = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"] or None,
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
        autocommit=True,
    )
    try:
        with transaction.atomic():
            with pytest.raises(InsufficientBalance):
                kernia_billing.track(user, "messages", 5)
            other.execute(
                f"SELECT id FROM {Entitlement._meta.db_table} WHERE id = %s FOR UPDATE NOWAIT",
                [entitlement.pk],
            )
    finally:
        other.close()
