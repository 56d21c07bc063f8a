"""Scale benchmark: the operations of issue 18 at 1M and 10M ledger rows (PostgreSQL).

Usage::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h18_bench \\
        .venv/bin/python bench/bench_scale.py --rows 1000000 10000000

Builds, per size, a fresh database (the ``DATABASE_URL``'s name; dropped at the end
unless ``--keep``) with 10,000 customers x 3 features and the ledger made with
set-based SQL (``generate_series``): 10% of the rows on one busy customer, the rest
spread, times over the last 365 days per million rows (``--days-per-million``: history
grows with time while a period's events stay the same; ``--days 365`` keeps every size in
one year, so a period holds 10x the events at 10M). Rollups are built as the migration backfills
them and usage is set to the ledger's sum since each period start (a clean audit).
Prints, per size, the table of the issue: history with ``daily=true`` over 90 days and
the first page for the busy customer (ours, and the former exact-count / whole-ledger
plans beside it), the ledger audit, the customer part of reconcile, a renewal reset per
customer, check/track p50, and the ledger's size. A figure, not a test.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/h18_bench")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

CUSTOMERS = 10_000
FEATURES = ("messages", "images", "exports")


class DisableMigrations(dict):
    """Build tables straight from the models: dj-stripe's migrations take minutes."""

    def __contains__(self, item: object) -> bool:
        return True

    def __getitem__(self, item: str) -> None:
        return None


def timed(work: Callable[[], Any], runs: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``runs`` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def build(rows: int, days: int) -> int:
    """The catalog, customers, entitlements and ``rows`` ledger rows; the busy customer's id."""
    from django.contrib.contenttypes.models import ContentType

    from kernia_billing.models import BillingCustomer, Entitlement, Feature, Plan, PlanFeature

    settings.MIGRATION_MODULES = DisableMigrations()
    connection.settings_dict["TEST"]["NAME"] = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    plan = Plan.objects.create(key="bench", name="Bench", is_default=True)
    features = []
    for key in FEATURES:
        feature = Feature.objects.create(key=key, name=key, kind="metered")
        PlanFeature.objects.create(
            plan=plan, feature=feature, included=10**12, reset_period="month"
        )
        features.append(feature)
    owner_type = ContentType.objects.get(app_label="auth", model="user")
    now = timezone.now()
    start = now - timedelta(days=10)
    BillingCustomer.objects.bulk_create(
        [
            BillingCustomer(owner_type=owner_type, owner_id=str(i), plan=plan)
            for i in range(CUSTOMERS)
        ],
        batch_size=2000,
    )
    BillingCustomer.objects.update(created_at=now - timedelta(days=400))
    customers = list(BillingCustomer.objects.order_by("pk").values_list("pk", flat=True))
    Entitlement.objects.bulk_create(
        [
            Entitlement(
                customer_id=c,
                feature=f,
                included=10**12,
                reset_period="month",
                reset_anchor=now - timedelta(days=400),
                period_start=start,
                next_reset_at=start + timedelta(days=30),
            )
            for c in customers
            for f in features
        ],
        batch_size=5000,
    )
    busy, first, feature0 = customers[0], customers[0], features[0].pk
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO kernia_billing_usageevent (customer_id, feature_id, amount, "
            "idempotency_key, request_fingerprint, properties, created_at, balance_after, "
            "usage_after, from_grants) "
            "SELECT CASE WHEN i %% 10 = 0 THEN %s ELSE %s + (i * 7919) %% %s END, "
            "%s + (i %% 3), 1, md5(i::text)::uuid::text, "
            "substring(sha256(i::text::bytea) from 1 for 16), NULL, "
            "now() - (((i * 104729) %% %s) || ' seconds')::interval, 1000, i, 0 "
            "FROM generate_series(1::bigint, %s) i",
            [busy, first, CUSTOMERS, feature0, days * 86400, rows],
        )
        load = time.perf_counter() - t
        cursor.execute(
            "INSERT INTO kernia_billing_usagerollup (customer_id, feature_id, day, amount, events) "
            "SELECT customer_id, feature_id, (created_at AT TIME ZONE 'UTC')::date, SUM(amount), "
            "COUNT(*) FROM kernia_billing_usageevent GROUP BY 1, 2, 3"
        )
        cursor.execute(
            "UPDATE kernia_billing_entitlement e SET usage = COALESCE((SELECT SUM(amount) "
            "FROM kernia_billing_usageevent u WHERE u.customer_id = e.customer_id "
            "AND u.feature_id = e.feature_id AND u.created_at >= e.period_start), 0)"
        )
        cursor.execute("ANALYZE")
    print(f"  built {rows:,} rows in {load:.0f} s (+ rollups and usage)", flush=True)
    return busy


def measure(rows: int, busy: int) -> list[tuple[str, str]]:
    from kernia_billing import selectors
    from kernia_billing.models import BillingCustomer
    from kernia_billing.services import usage
    from kernia_billing.services.ledger_audit import audit_ledger
    from kernia_billing.services.reconcile import reconcile_customers

    out: list[tuple[str, str]] = []
    since = timezone.now() - timedelta(days=90)
    events = selectors.usage_events(busy, since=since)

    def daily() -> None:
        selectors.daily_usage(busy, since=since)

    def daily_before() -> None:
        selectors.daily_usage_totals(events)

    p50, p99 = timed(daily, 20)
    b50, _ = timed(daily_before, 3)
    out.append(
        (
            "daily=true 90 days, busy customer",
            f"{p50:.1f} ms p50, {p99:.1f} p99 (ledger scan: {b50:.0f} ms)",
        )
    )
    features = selectors.history_features(busy)
    all_events = selectors.usage_events(busy, features=features)

    def first_page() -> None:
        selectors.capped_count(all_events)
        selectors.history_page(all_events, features, 0, 51)

    def first_page_before() -> None:
        all_events.count()
        list(all_events[:50])

    p50, p99 = timed(first_page, 20)
    b50, _ = timed(first_page_before, 3)
    out.append(
        (
            "first page, busy customer",
            f"{p50:.1f} ms p50 (exact COUNT and one sorted read: {b50:.0f} ms)",
        )
    )
    start = time.perf_counter()
    drifts = audit_ledger()
    out.append(("ledger audit", f"{time.perf_counter() - start:.1f} s, {len(drifts)} drift(s)"))
    with CaptureQueriesContext(connection) as captured:
        start = time.perf_counter()
        reconcile_customers()
        took = time.perf_counter() - start
    out.append(
        (
            "customer part of reconcile",
            f"{took:.1f} s, {len(captured.captured_queries)} queries for {CUSTOMERS:,} customers",
        )
    )
    customer = BillingCustomer.objects.get(pk=busy)

    def check() -> None:
        usage.check(customer, "messages")

    def track() -> None:
        usage.track(customer, "messages", 1)

    keys = iter(range(10**9))

    def track_keyed() -> None:
        usage.track(customer, "messages", 1, idempotency_key=f"bench-{next(keys)}")

    def replay() -> None:
        usage.track(customer, "messages", 1, idempotency_key="bench-0")

    c50, _ = timed(check, 200)
    t50, _ = timed(track, 200)
    k50, _ = timed(track_keyed, 200)
    r50, _ = timed(replay, 200)
    out.append(
        (
            "check / track / keyed track / replay p50, busy customer",
            f"{c50:.2f} / {t50:.2f} / {k50:.2f} / {r50:.2f} ms",
        )
    )
    out.append(("replay lookup plan", replay_plan(busy)))
    sizes_at = len(out)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size('kernia_billing_usageevent'), "
            "pg_indexes_size('kernia_billing_usageevent'), "
            "pg_total_relation_size('kernia_billing_usagerollup')"
        )
        heap, indexes, rollups = cursor.fetchone()
        cursor.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'kernia_billing_usageevent'::regclass ORDER BY 2 DESC"
        )
        per_index = cursor.fetchall()
    million = rows / 1_000_000
    out.append(
        (
            "ledger size per million rows",
            f"{(heap + indexes) / million / 2**20:.0f} MB "
            f"(heap {heap / million / 2**20:.0f}, indexes {indexes / million / 2**20:.0f}); "
            f"rollups {rollups / 2**20:.0f} MB in all",
        )
    )
    out.append(
        ("  heap", f"{heap / million / 2**20:.0f} MB per million rows ({heap / rows:.0f} B/row)")
    )
    for name, size in per_index:
        out.append(
            (
                f"  index {name}",
                f"{size / million / 2**20:.0f} MB per million rows ({size / rows:.0f} B/row)",
            )
        )
    # Last: the renewals move periods, so the books no longer match the synthetic ledger.
    out[sizes_at:sizes_at] = renewals()
    return out


class Cost:
    """Wall and CPU time and statements of a number of calls, per call."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.statements = self.calls = 0

    def add(self, work: Callable[[], Any], calls: int) -> None:
        with CaptureQueriesContext(connection) as captured:
            wall, cpu = time.perf_counter(), time.process_time()
            work()
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
        self.statements += len(captured.captured_queries)
        self.calls += calls

    def __str__(self) -> str:
        n = self.calls
        return (
            f"{self.wall / n * 1000:.2f} ms ({self.cpu / n * 1000:.2f} ms CPU), "
            f"{self.statements / n:.1f} statements"
        )


def renewals() -> list[tuple[str, str]]:
    """Per customer: the webhook's reset, the whole of our part of the renewal webhook, the
    lazy reset on the first track, and the storm (``reset_due``) - ours beside the former
    code where it changed, alternating in the same run (the machine is shared)."""
    from django.contrib.auth import get_user_model

    from kernia_billing.models import BillingCustomer, Entitlement, PlanFeature
    from kernia_billing.services import usage
    from kernia_billing.services.customers import apply_subscription
    from kernia_billing.services.entitlements import renewals as storm
    from kernia_billing.services.entitlements.resets import reset_for_new_period
    from kernia_billing.types import SubscriptionSnapshot

    track_module: Any = importlib.import_module("kernia_billing.services.usage.track")
    connection.queries_log = deque(maxlen=10**7)  # every statement counted (default 9,000)
    now = timezone.now().replace(microsecond=0)
    old_start, new_start = now - timedelta(days=31), now - timedelta(days=1)
    ids = list(BillingCustomer.objects.order_by("pk").values_list("pk", flat=True)[1:])
    webhook, lazy = ids[:2000], ids[2000:4000]
    # Billing customers in the period that just ended, their entitlements billing-reset.
    BillingCustomer.objects.filter(pk__in=webhook).update(
        current_period_start=old_start, current_period_end=new_start, billing_interval="month"
    )
    Entitlement.objects.filter(customer_id__in=webhook).update(
        reset_period="billing",
        reset_anchor=old_start,
        period_start=old_start,
        next_reset_at=new_start,
    )
    customers = list(BillingCustomer.objects.filter(pk__in=webhook).order_by("pk"))
    for customer in customers:
        customer.current_period_start = new_start
        customer.current_period_end = new_start + timedelta(days=30)

    def resets(batch: list[Any], reset: Callable[[Any, Any], int]) -> Callable[[], None]:
        def work() -> None:
            for customer in batch:
                with transaction.atomic():
                    assert reset(customer, new_start) == 3

        return work

    ours, former = Cost(), Cost()
    for i in range(0, 1000, 500):  # alternating blocks of 250 customers
        former.add(resets(customers[i : i + 250], former_reset_for_new_period), 250)
        ours.add(resets(customers[i + 250 : i + 500], reset_for_new_period), 250)
    out = [
        (
            "renewal: the webhook's reset, per customer",
            f"{ours} (former ORM code: {former}); incl. BEGIN/COMMIT",
        )
    ]
    # The reset's own statements, without a COMMIT (and its WAL flush) per customer: in
    # the webhook the transaction, and its commit, are dj-stripe's anyway.
    Entitlement.objects.filter(customer_id__in=webhook[:1000]).update(period_start=old_start)
    alone, former_alone = Cost(), Cost()
    for i in range(0, 1000, 500):
        with transaction.atomic():
            former_alone.add(resets(customers[i : i + 250], former_reset_for_new_period), 250)
            alone.add(resets(customers[i + 250 : i + 500], reset_for_new_period), 250)
    out.append(
        (
            "renewal: the webhook's reset inside one transaction, per customer",
            f"{alone} (former ORM code: {former_alone})",
        )
    )
    snapshot_at = {}
    for customer in customers[1000:]:
        snapshot_at[customer.pk] = SubscriptionSnapshot(
            id=f"sub_{customer.pk}",
            stripe_customer_id=f"cus_{customer.pk}",
            status="active",
            price_ids=(),
            current_period_start=new_start,
            current_period_end=new_start + timedelta(days=30),
            interval="month",
        )
    whole = Cost()
    # The plan's features reset with the billing period, as these customers' entitlements do
    # (else each renewal would also re-sync the reset period of every feature).
    PlanFeature.objects.update(reset_period="billing")
    whole.add(
        lambda: [apply_subscription(c, snapshot_at[c.pk]) for c in customers[1000:]],
        len(customers) - 1000,
    )
    PlanFeature.objects.update(reset_period="month")
    out.append(
        (
            "renewal: our part of the webhook (apply_subscription), per customer",
            f"{whole} (dj-stripe's own part: see docs/benchmarks.md)",
        )
    )

    # The lazy path: the first track after the boundary resets, then tracks.
    Entitlement.objects.filter(customer_id__in=lazy, feature__key="messages").update(
        next_reset_at=now - timedelta(minutes=1)
    )
    owner_ids = dict(BillingCustomer.objects.filter(pk__in=lazy).values_list("pk", "owner_id"))
    owners = [get_user_model()(pk=int(owner_ids[pk])) for pk in lazy]

    def tracks(batch: list[Any]) -> Callable[[], object]:
        return lambda: [usage.track(owner, "messages", 1) for owner in batch]

    first, former_first, second = Cost(), Cost(), Cost()
    current = track_module.reset_if_due
    after_reset = track_module.track_after_reset_in_one_update
    for i in range(0, 2000, 500):
        # The former path: the ORM's reset, then the one statement (no reset-and-deduct).
        track_module.reset_if_due = former_reset_if_due
        track_module.track_after_reset_in_one_update = lambda *args, **kwargs: None
        former_first.add(tracks(owners[i : i + 250]), 250)
        track_module.reset_if_due = current
        track_module.track_after_reset_in_one_update = after_reset
        first.add(tracks(owners[i + 250 : i + 500]), 250)
        second.add(tracks(owners[i + 250 : i + 500]), 250)
    out.append(
        (
            "renewal: lazy, first track after the boundary, per customer",
            f"{first}; the next track {second} (former reset: {former_first})",
        )
    )

    # The storm: every entitlement of every customer due at once.
    later = now + timedelta(days=60)
    due = Entitlement.objects.filter(next_reset_at__lte=later).count()
    stormed = Cost()
    done: list[int] = []
    stormed.add(lambda: done.append(storm.reset_due(now=later)), CUSTOMERS)
    out.append(
        (
            f"renewal storm: reset_due of {due:,} entitlements, per customer",
            f"{stormed} ({done[0]:,} reset: {stormed.wall:.2f} s and "
            f"{stormed.statements} statements in all)",
        )
    )
    return out


def former_reset_for_new_period(customer: Any, period_start: Any) -> int:
    """The webhook's reset before this release (no rollovers here): the ORM's lock and
    ``UPDATE`` with two correlated sums."""
    from django.db.models import OuterRef, Q, Subquery, Sum, Value
    from django.db.models.functions import Coalesce

    from kernia_billing.models import Entitlement, UsageEvent

    due = (
        Entitlement.objects.filter(customer=customer, reset_period="billing")
        .filter(Q(period_start__isnull=True) | Q(period_start__lt=period_start))
        .order_by("pk")
        .select_for_update()
    )
    rows = list(due.values_list("pk", flat=True))
    since = UsageEvent.objects.filter(
        customer_id=OuterRef("customer_id"),
        feature_id=OuterRef("feature_id"),
        created_at__gte=period_start,
    ).order_by()

    def total(column: str) -> Coalesce:
        summed = since.values("customer_id").annotate(total=Sum(column)).values("total")
        return Coalesce(Subquery(summed), Value(0))

    return Entitlement.objects.filter(pk__in=rows).update(
        usage=total("amount"),
        grant_usage=total("from_grants"),
        period_start=period_start,
        reset_anchor=period_start,
        next_reset_at=customer.current_period_end,
        updated_at=timezone.now(),
    )


def former_reset_if_due(entitlement: Any, now: Any) -> Any:
    """The lazy reset before this release: the ORM's conditional ``UPDATE``, then a reload."""
    from kernia_billing.models import Entitlement
    from kernia_billing.services.entitlements.resets import next_period
    from kernia_billing.services.entitlements.rows import _reload

    if entitlement.next_reset_at is None or now < entitlement.next_reset_at:
        return entitlement
    start, end = next_period(entitlement, now)
    Entitlement.objects.filter(pk=entitlement.id, next_reset_at=entitlement.next_reset_at).update(
        usage=0, grant_usage=0, period_start=start, next_reset_at=end, updated_at=timezone.now()
    )
    return _reload(entitlement.id)


def replay_plan(customer_id: int) -> str:
    """The index the replay lookup of one (customer, key) reads: the unique digest one."""
    from kernia_billing.services.usage.ledger import keyed_events

    plan = keyed_events([(customer_id, "bench-0")]).explain()
    used = [line.strip() for line in plan.splitlines() if "Index" in line or "Scan" in line]
    return used[0] if used else plan.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--keep", action="store_true", help="Keep the database at the end.")
    span = parser.add_mutually_exclusive_group()
    span.add_argument(
        "--days-per-million", type=int, default=365, help="History's span per million rows."
    )
    span.add_argument("--days", type=int, help="History's span whatever the size.")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("The scale benchmark runs on PostgreSQL (DATABASE_URL).")
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    for rows in args.rows:
        days = args.days or max(1, round(args.days_per_million * rows / 1_000_000))
        print(f"== {rows:,} ledger rows over {days:,} days ==", flush=True)
        busy = build(rows, days)
        for name, figure in measure(rows, busy):
            print(f"| {name} | {figure} |", flush=True)
        print(f"  load average: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
        if not args.keep or rows != args.rows[-1]:
            connection.creation.destroy_test_db(
                connection.settings_dict["NAME"], verbosity=0, keepdb=False
            )


if __name__ == "__main__":
    main()
