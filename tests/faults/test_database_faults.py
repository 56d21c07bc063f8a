"""Database faults during track: nothing half-written, a clear 503, service resumes.

The faults are real database behaviour, not mocks: a trigger that makes the ledger
INSERT fail after the balance UPDATE ran in the same transaction, and (PostgreSQL)
a backend terminated in the middle of a track, or while idle between requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, close_old_connections, connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

import kernia_billing
from kernia_billing import TrackRequest
from kernia_billing.models import Entitlement, Feature, UsageEvent
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import TRACK, assert_error

EVENTS = UsageEvent._meta.db_table
BATCH = "/api/auth/billing/track/batch"


def messages_usage() -> int:
    return Entitlement.objects.get(feature__key="messages").usage


@contextmanager
def ledger_insert_fails() -> Iterator[None]:
    """A trigger that aborts every INSERT into the ledger (SQLite or PostgreSQL)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION kb_fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected ledger fault'; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER kb_fault BEFORE INSERT ON {EVENTS} "
                "FOR EACH ROW EXECUTE FUNCTION kb_fault()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER kb_fault BEFORE INSERT ON {EVENTS} "
                "BEGIN SELECT RAISE(ABORT, 'injected ledger fault'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER kb_fault{' ON ' + EVENTS if _pg() else ''}")
            if _pg():
                cursor.execute("DROP FUNCTION kb_fault()")


def _pg() -> bool:
    return connection.vendor == "postgresql"


@pytest.mark.django_db
@pytest.mark.parametrize("key", [None, "retry-me"])
def test_a_track_failing_midway_leaves_no_row_and_no_balance_change(user, plan, key):
    kernia_billing.track(user, "messages", 5)
    with ledger_insert_fails(), pytest.raises(DatabaseError):
        kernia_billing.track(user, "messages", 7, idempotency_key=key)

    assert messages_usage() == 5  # the UPDATE that ran before the INSERT was rolled back
    assert UsageEvent.objects.count() == 1
    # And the same request succeeds once the fault is gone, counted once.
    assert kernia_billing.track(user, "messages", 7, idempotency_key=key).usage == 12
    assert messages_usage() == 12 and UsageEvent.objects.count() == 2


@pytest.mark.django_db
def test_a_batch_failing_midway_writes_nothing(user, plan):
    # The trigger's error goes up as the database error it is (an IntegrityError on SQLite).
    with ledger_insert_fails(), pytest.raises(DatabaseError):
        kernia_billing.track_batch(user, [TrackRequest("messages", 2) for _ in range(50)])

    assert messages_usage() == 0
    assert UsageEvent.objects.count() == 0


@pytest.mark.django_db
def test_rest_track_failing_midway_is_a_5xx_with_nothing_written(plan, user, api):
    api.post(TRACK, {"feature": "messages"}, format="json")
    api.raise_request_exception = False
    with ledger_insert_fails():
        response = api.post(TRACK, {"feature": "messages", "amount": 3}, format="json")

    assert response.status_code >= 500
    assert messages_usage() == 1 and UsageEvent.objects.count() == 1


# --- the database goes away (PostgreSQL: terminate the backend) --------------------------


def admin_connection() -> psycopg.Connection:
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
        autocommit=True,
    )


def admin_view(admin: psycopg.Connection) -> tuple[int, int]:
    """(messages usage, ledger rows) as another connection sees them."""
    row = admin.execute(
        f"SELECT (SELECT e.usage FROM {Entitlement._meta.db_table} e "
        f"JOIN {Feature._meta.db_table} f ON f.id = e.feature_id WHERE f.key = 'messages'), "
        f"(SELECT count(*) FROM {EVENTS})"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def post(client: APIClient, body: dict) -> Any:
    """One request as a production server handles it: Django's test client skips
    ``close_old_connections`` at request start/end, which is what drops a broken
    connection (and re-runs CONN_HEALTH_CHECKS) between requests in production."""
    close_old_connections()
    try:
        return client.post(TRACK, body, format="json")
    finally:
        close_old_connections()


@pytest.fixture
def token_api(transactional_db, user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.mark.postgres
def test_the_backend_dying_midway_gives_503_then_service_resumes(plan, token_api):
    assert post(token_api, {"feature": "messages"}).status_code == 201
    with admin_connection() as admin:
        # The backend serving the track kills itself after the balance UPDATE and before
        # the ledger row: the server drops the connection in the middle of the transaction.
        admin.execute(
            "CREATE FUNCTION kb_die() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); "
            "PERFORM pg_sleep(5); RETURN NEW; END $$"
        )
        admin.execute(
            f"CREATE TRIGGER kb_die BEFORE INSERT ON {EVENTS} "
            "FOR EACH ROW EXECUTE FUNCTION kb_die()"
        )
        try:
            response = post(token_api, {"feature": "messages", "amount": 3, "idempotencyKey": "k"})
            assert_error(response, 503, "service_unavailable")
            assert response["Retry-After"]
            # Seen from another connection: nothing half-written.
            assert admin_view(admin) == (1, 1)
        finally:
            admin.execute(f"DROP TRIGGER kb_die ON {EVENTS}")
            admin.execute("DROP FUNCTION kb_die()")

    retried = post(token_api, {"feature": "messages", "amount": 3, "idempotencyKey": "k"})
    assert retried.status_code == 201, retried.content
    assert retried.json()["usage"] == 4 and retried.json()["replayed"] is False
    assert messages_usage() == 4 and UsageEvent.objects.count() == 2


@pytest.mark.postgres
def test_an_idle_connection_killed_between_requests_is_replaced(plan, token_api):
    assert post(token_api, {"feature": "messages"}).status_code == 201
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with admin_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    # CONN_HEALTH_CHECKS notices the dead connection and opens a new one: no error at all.
    assert post(token_api, {"feature": "messages"}).status_code == 201
    assert messages_usage() == 2 and UsageEvent.objects.count() == 2
