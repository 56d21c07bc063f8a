"""kernia_partition_ledger: the ledger partitioned by month behaves as the plain one does.

PostgreSQL only. The module runs in a database of its own (created here, its tables made
from the models, dropped at the end), so the session's test database is never
partitioned. The module fixture seeds two months of usage, partitions the ledger, and
empties the database again; every test then uses the partitioned ledger through the
public Python API, REST and the commands.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import connection, transaction

import kernia_billing
from kernia_billing import selectors
from kernia_billing.models import (
    ArchivedUsageEvent,
    BillingCustomer,
    Entitlement,
    FeatureKind,
    OverageReport,
    ReportStatus,
    ResetPeriod,
    UsageEvent,
)
from kernia_billing.services.grants.issue import grant
from kernia_billing.services.history import partitions as ledger_partitions
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.metering.sender import send_pending
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.metering.conftest import metered  # noqa: F401 - the fixture

TRACK = "/api/auth/billing/track"
BATCH = "/api/auth/billing/track/batch"
USAGE = "/api/auth/billing/usage"
CHECK = "/api/auth/billing/check"

# The module's clock: partitioned on START with three months ahead (December's rows
# came first), so December 2029 to April 2030 have partitions.
START = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)
MONTHS = ["2029_12", "2030_01", "2030_02", "2030_03", "2030_04"]


@dataclass
class Conversion:
    before: list[tuple[Any, ...]]
    after: list[tuple[Any, ...]]
    max_id_before: int
    new_id: int
    replay: Any
    partitions: list[str]
    printed: str


CONVERSION: list[Conversion] = []


def _rows() -> list[tuple[Any, ...]]:
    fields = ("id", "customer_id", "feature_id", "amount", "idempotency_key", "created_at")
    return list(UsageEvent.objects.order_by("id").values_list(*fields))


def _seed_and_partition() -> Conversion:
    messages = FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)
    plan = PlanFactory(key="free", name="Free", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=100, reset_period=ResetPeriod.MONTH)
    user = UserFactory(username="seed")
    with time_machine.travel(datetime(2029, 12, 20, tzinfo=UTC), tick=False) as clock:
        kernia_billing.track(user, "messages", 3, idempotency_key="seed-december")
        clock.move_to(datetime(2030, 1, 10, tzinfo=UTC))
        kernia_billing.track(user, "messages", 4, idempotency_key="seed-january")
        before = _rows()
        clock.move_to(START)
        out = StringIO()
        call_command("kernia_partition_ledger", "--print-sql", stdout=out)
        printed = out.getvalue()
        assert _rows() == before  # printing changes nothing
        out = StringIO()
        call_command("kernia_partition_ledger", "--apply", stdout=out)
        assert "Partitioned the ledger into 5 monthly partition(s)" in out.getvalue()
        after = _rows()
        replay = kernia_billing.track(user, "messages", 3, idempotency_key="seed-december")
        new_id = kernia_billing.track(user, "messages", 1).event_id
    return Conversion(
        before=before,
        after=after,
        max_id_before=max(row[0] for row in before),
        new_id=new_id,
        replay=replay,
        partitions=[p.name for p in ledger_partitions.partitions()],
        printed=printed,
    )


@pytest.fixture(scope="module", autouse=True)
def partitioned_database(django_db_setup, django_db_blocker):
    """A database of this module's own, its ledger partitioned; dropped afterwards."""
    if connection.vendor != "postgresql":
        yield None
        return
    with django_db_blocker.unblock():
        base = connection.settings_dict["NAME"]
        name = f"{base}_partitioned"
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        connection.settings_dict["NAME"] = name
        ContentType.objects.clear_cache()  # ids of the other database
        try:
            call_command("migrate", run_syncdb=True, verbosity=0)
            CONVERSION.append(_seed_and_partition())
            call_command("flush", interactive=False, verbosity=0)
            ContentType.objects.clear_cache()
            yield name
        finally:
            connection.close()
            connection.settings_dict["NAME"] = base
            ContentType.objects.clear_cache()
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def run(*args: str) -> str:
    out = StringIO()
    call_command("kernia_partition_ledger", *args, stdout=out)
    return out.getvalue()


def usage(feature: str = "messages") -> int:
    return Entitlement.objects.get(feature__key=feature).usage


# --- the conversion --------------------------------------------------------------------------


@pytest.mark.postgres
def test_conversion_keeps_every_row_its_id_and_key_and_the_id_sequence():
    conversion = CONVERSION[0]
    assert conversion.after == conversion.before and len(conversion.before) == 2
    assert conversion.partitions == [f"kernia_billing_usageevent_{m}" for m in MONTHS]
    # A key used before the conversion (in December's partition) is still a replay.
    assert conversion.replay.replayed is True
    assert conversion.replay.event_id == conversion.before[0][0]
    assert conversion.new_id > conversion.max_id_before  # the sequence went on, not over
    lines = conversion.printed.splitlines()
    assert lines[:2] == [
        "BEGIN;",
        'LOCK TABLE "kernia_billing_usageevent" IN ACCESS EXCLUSIVE MODE;',
    ]
    assert lines[-1] == "COMMIT;"
    assert sum("PARTITION OF" in line for line in lines) == len(MONTHS)


@pytest.mark.postgres
@pytest.mark.django_db
def test_apply_again_and_the_monthly_job_only_create_missing_partitions(clock):
    assert "already partitioned; created 0 partition(s)" in run("--apply")
    clock.move_to(datetime(2030, 3, 10, tzinfo=UTC))
    printed = run("--print-sql", "--months-ahead", "3")
    assert printed.count("CREATE TABLE") == 2 and "kernia_billing_usageevent_2030_06" in printed

    output = run("--create-partitions", "--months-ahead", "3")

    assert "created 2 partition(s)" in output and "usageevent_2030_05" in output
    assert "created 0 partition(s)" in run("--create-partitions", "--months-ahead", "3")
    assert "usageevent_2030_06: 2030-06-01 to 2030-07-01" in run()
    with pytest.raises(ledger_partitions.PartitioningError, match="already partitioned"):
        ledger_partitions.conversion_sql()


# --- track, replays, conflicts, batch ----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_key_from_an_earlier_month_is_a_replay_or_a_conflict_never_a_new_event(api, plan, clock):
    first = api.post(TRACK, {"feature": "messages", "amount": 2, "idempotencyKey": "k"}, "json")
    assert first.status_code == 201, first.content
    clock.move_to(datetime(2030, 2, 20, tzinfo=UTC))  # next period, next partition
    api.post(TRACK, {"feature": "messages", "amount": 1}, format="json")  # the reset is done
    # The one-statement path inserts and the keys table refuses: answered as a replay.
    replay = api.post(TRACK, {"feature": "messages", "amount": 2, "idempotencyKey": "k"}, "json")
    conflict = api.post(TRACK, {"feature": "messages", "amount": 5, "idempotencyKey": "k"}, "json")

    assert replay.status_code == 201 and replay.json()["replayed"] is True
    assert replay.json()["eventId"] == first.json()["eventId"]
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert UsageEvent.objects.filter(idempotency_key="k").count() == 1
    assert usage() == 1
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_track_past_the_last_partition_is_a_clear_503_and_changes_nothing(api, plan, clock):
    assert api.post(TRACK, {"feature": "messages", "amount": 2}, format="json").status_code == 201
    clock.move_to(datetime(2030, 5, 2, tzinfo=UTC))  # the last partition is April's
    response = api.post(TRACK, {"feature": "messages", "amount": 1}, format="json")

    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "service_unavailable" and "--create-partitions" in error["message"]
    assert UsageEvent.objects.count() == 1
    run("--create-partitions")  # the job catches up: the next track is recorded
    assert api.post(TRACK, {"feature": "messages", "amount": 1}, format="json").status_code == 201
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_batch_answers_keys_of_an_earlier_month_as_replays(api, plan, clock):
    events = [
        {"feature": "messages", "amount": 1, "idempotencyKey": "b1"},
        {"feature": "messages", "amount": 2, "idempotencyKey": "b2"},
    ]
    recorded = api.post(BATCH, {"events": events}, format="json").json()["results"]
    clock.move_to(datetime(2030, 2, 20, tzinfo=UTC))
    again = [*events[:1], {**events[1], "amount": 9}, {"feature": "messages", "amount": 3}]

    results = api.post(BATCH, {"events": again}, format="json").json()["results"]

    assert results[0]["replayed"] is True and results[0]["eventId"] == recorded[0]["eventId"]
    assert results[1]["ok"] is False and results[1]["error"]["code"] == "idempotency_conflict"
    assert results[2]["ok"] is True and results[2]["replayed"] is False
    assert usage() == 3
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_first_uses_of_one_key_either_side_of_a_month_boundary_record_once(plan):
    """The race the per-partition unique index lost: both months' rows would be recorded."""
    user = UserFactory()
    january_end = datetime(2030, 1, 31, 23, 59, 59, tzinfo=UTC)
    february = datetime(2030, 2, 1, 0, 0, 1, tzinfo=UTC)
    with time_machine.travel(START, tick=False) as clock:
        kernia_billing.track(user, "messages", 1)  # the period: January 15 to February 15
        clock.move_to(february + timedelta(seconds=5))
        inserted, release = threading.Event(), threading.Event()
        results: dict[str, Any] = {}

        def january() -> None:
            try:
                with transaction.atomic():
                    results["january"] = kernia_billing.track(
                        user, "messages", 1, idempotency_key="edge", now=january_end
                    )
                    inserted.set()
                    release.wait(30)
            finally:
                inserted.set()
                connection.close()

        def february_side() -> None:
            try:
                inserted.wait(30)  # January's row is in, not committed: invisible here
                results["february"] = kernia_billing.track(
                    user, "messages", 1, idempotency_key="edge", now=february
                )
            except Exception as error:  # asserted on below
                results["february"] = error
            finally:
                connection.close()

        threads = [threading.Thread(target=january), threading.Thread(target=february_side)]
        for thread in threads:
            thread.start()
        inserted.wait(30)
        raced = _a_session_waits_on_a_lock()
        release.set()
        for thread in threads:
            thread.join(60)

    first, second = results["january"], results["february"]
    assert raced  # February's track was under way before January's committed
    assert not isinstance(second, Exception), second
    assert (first.replayed, second.replayed) == (False, True)
    assert second.event_id == first.event_id
    assert UsageEvent.objects.filter(idempotency_key="edge").count() == 1
    assert usage() == 2
    assert audit_ledger() == []


def _a_session_waits_on_a_lock() -> bool:
    """February's track blocks on the entitlement row January's holds (polled, 20 s at most)."""
    for _ in range(400):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
        threading.Event().wait(0.05)
    return False


# --- check and history ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_check_history_pages_and_daily_totals_read_across_partitions(api, plan, clock):
    ids = []
    for day in (datetime(2030, 1, 20), datetime(2030, 2, 20), datetime(2030, 3, 20)):
        clock.move_to(day.replace(tzinfo=UTC))
        ids += [api.post(TRACK, {"feature": "messages"}, "json").json()["eventId"] for _ in "ab"]

    check = api.post(CHECK, {"feature": "messages"}, format="json").json()
    first = api.get(USAGE, {"limit": 4}).json()
    second = api.get(first["next"]).json()
    daily = api.get(USAGE, {"daily": "true"}).json()["daily"]
    march = api.get(USAGE, {"from": "2030-03-01T00:00:00Z"}).json()

    assert (check["allowed"], check["usage"]) == (True, 2)  # March's period only
    assert first["count"] == 6 and first["countCapped"] is False
    assert [e["id"] for e in first["results"] + second["results"]] == ids[::-1]
    assert second["next"] is None
    assert [(d["date"], d["events"]) for d in daily] == [
        ("2030-01-20", 2),
        ("2030-02-20", 2),
        ("2030-03-20", 2),
    ]
    assert [e["id"] for e in march["results"]] == ids[:3:-1]


@pytest.mark.postgres
@pytest.mark.django_db
def test_one_customers_recent_history_reads_only_the_months_it_asks_for(api, plan, messages, clock):
    clock.move_to(datetime(2030, 3, 20, tzinfo=UTC))
    api.post(TRACK, {"feature": "messages"}, format="json")
    customer_id = UsageEvent.objects.get().customer_id
    since = datetime(2030, 2, 10, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # tiny tables: plan as a big one
    recent = selectors.usage_events(customer_id, since=since)

    plan_text = recent.explain()
    one_feature = selectors.usage_events(customer_id, feature_id=messages.id, since=since).explain()

    scanned = {m for m in MONTHS if f"usageevent_{m}" in plan_text}
    assert scanned == {"2030_02", "2030_03", "2030_04"}, plan_text
    assert "usageevent_2030_01" not in one_feature and "usageevent_2029_12" not in one_feature


# --- retention ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_kernia_archive_usage_moves_old_rows_and_the_audit_stays_clean(api, plan, clock):
    api.post(TRACK, {"feature": "messages", "amount": 2, "idempotencyKey": "old"}, "json")
    clock.move_to(datetime(2030, 3, 20, tzinfo=UTC))
    api.post(TRACK, {"feature": "messages", "amount": 3}, format="json")

    out = StringIO()
    call_command("kernia_archive_usage", "--keep-periods", "0", stdout=out)
    assert "Archived 1 usage event(s)" in out.getvalue()
    # The archived row's key is forgotten with it (the archive's documented behaviour).
    again = api.post(TRACK, {"feature": "messages", "amount": 2, "idempotencyKey": "old"}, "json")

    assert again.json()["replayed"] is False
    assert ArchivedUsageEvent.objects.filter(amount=2).count() == 1
    assert usage() == 5
    out = StringIO()
    call_command("kernia_reconcile", stdout=out)
    assert "No drift." in out.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db
def test_detaching_old_months_keeps_history_draws_and_the_audit(api, user, plan, clock):
    api.post(TRACK, {"feature": "messages", "amount": 10000, "idempotencyKey": "jan"}, "json")
    grant(user, "messages", 50, reason="goodwill", idempotency_key="promo")
    api.post(TRACK, {"feature": "messages", "amount": 5}, format="json")  # from the grant
    clock.move_to(datetime(2030, 3, 20, tzinfo=UTC))
    api.post(TRACK, {"feature": "messages", "amount": 1}, format="json")
    daily_before = api.get(USAGE, {"daily": "true"}).json()["daily"]

    assert "Would detach 2 partition(s)" in run("--detach-before", "2030-02", "--dry-run")
    output = run("--detach-before", "2030-02")

    assert "usageevent_2030_01: 2 event(s), 1 with grant draws" in output
    assert [p.name[-7:] for p in ledger_partitions.partitions()] == MONTHS[2:]
    assert UsageEvent.objects.count() == 1
    assert ArchivedUsageEvent.objects.filter(from_grants=5).count() == 1  # the grants audit
    assert api.get(USAGE, {"daily": "true"}).json()["daily"] == daily_before  # rollups
    again = api.post(TRACK, {"feature": "messages", "amount": 1, "idempotencyKey": "jan"}, "json")
    assert again.json()["replayed"] is False  # a detached month's keys are forgotten
    out = StringIO()
    call_command("kernia_reconcile", stdout=out)
    assert "No drift." in out.getvalue()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM kernia_billing_usageevent_2030_01")
        assert cursor.fetchone()[0] == 2  # the detached month, left to dump and drop
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked now
    BillingCustomer.objects.get().delete()  # its detached rows do not hold it


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_month_the_audit_still_reads_stays_attached(api, plan, clock):
    api.post(TRACK, {"feature": "members", "amount": 2}, format="json")  # seats never reset
    clock.move_to(datetime(2030, 3, 20, tzinfo=UTC))

    with pytest.raises(CommandError, match="1 event\\(s\\) the ledger audit counts"):
        run("--detach-before", "2030-02")

    assert len(ledger_partitions.partitions()) == len(MONTHS)
    assert audit_ledger() == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_detach_before_takes_a_month():
    with pytest.raises(CommandError, match="YYYY-MM"):
        run("--detach-before", "March")


# --- metering --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_overage_outbox_links_and_sends_without_the_foreign_key(metered, clock):  # noqa: F811
    customer = metered.customer()
    kernia_billing.track(customer.owner, "messages", 98)
    event = kernia_billing.track(customer.owner, "messages", 5)

    report = OverageReport.objects.get()
    assert report.usage_event_id == event.event_id and report.usage_event.amount == 5
    assert send_pending().sent == 1
    assert OverageReport.objects.get().status == ReportStatus.SENT
    assert metered.stripe_total(customer) == 3


# --- other databases -----------------------------------------------------------------------


@pytest.mark.django_db
def test_sqlite_is_refused_with_a_clear_error():
    if connection.vendor == "postgresql":
        pytest.skip("the refusal is SQLite's")
    with pytest.raises(CommandError, match="needs PostgreSQL"):
        run("--print-sql")
    with pytest.raises(CommandError, match="needs PostgreSQL"):
        run()


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_audit_over_partitions_finds_and_fixes_drift_and_keeps_the_sessions_jit(
    api, plan, clock
):
    api.post(TRACK, {"feature": "messages", "amount": 2}, format="json")
    clock.move_to(datetime(2030, 2, 20, tzinfo=UTC))  # a new period, in the next partition
    api.post(TRACK, {"feature": "messages", "amount": 3}, format="json")
    api.post(TRACK, {"feature": "messages", "amount": 4}, format="json")
    Entitlement.objects.filter(feature__key="messages").update(usage=99)
    with connection.cursor() as cursor:
        cursor.execute("SET jit = on")

    [drift] = audit_ledger(fix=True)

    assert (drift.subject, drift.expected, drift.actual, drift.fixed) == ("messages", 7, 99, True)
    assert usage() == 7  # only the period's partition counted
    assert audit_ledger() == []
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")  # planned without JIT during the audit only
        assert cursor.fetchone()[0] == "on"
