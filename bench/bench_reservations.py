"""Benchmark of reservations: reserve and confirm p50 against a plain track's p50, and
the statements each takes. In-process (the Python API), one thread.

Usage::

    .venv/bin/python bench/bench_reservations.py --rounds 3 --calls 400
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kernia_bench_reservations \\
        .venv/bin/python bench/bench_reservations.py

Rounds alternate track and reserve+confirm so both sides of a ratio see the same load.
A figure, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.bench_entitlements import DisableMigrations  # noqa: E402


def setup() -> object:
    settings.MIGRATION_MODULES = DisableMigrations()
    if connection.vendor == "sqlite":
        connection.settings_dict["TEST"]["NAME"] = f"{tempfile.mkdtemp()}/bench.sqlite3"
    elif os.environ.get("BENCH_TEST_DATABASE"):  # the throwaway database's name (shared hosts)
        connection.settings_dict["TEST"]["NAME"] = os.environ["BENCH_TEST_DATABASE"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)

    import kernia_billing
    from kernia_billing.models import Feature, Plan, PlanFeature
    from tests.factories import UserFactory

    tokens = Feature.objects.create(key="tokens", name="Tokens", kind="metered")
    plan = Plan.objects.create(key="bench", name="Bench", is_default=True)
    PlanFeature.objects.create(plan=plan, feature=tokens, included=10**12, reset_period="month")
    user = UserFactory(username="bench")
    kernia_billing.check(user, "tokens")
    return user


def timed(call: object, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    user = setup()
    import kernia_billing

    for _ in range(50):  # warm caches (SQL strings, serializers, connections)
        kernia_billing.track(user, "tokens", 1)
        kernia_billing.confirm(kernia_billing.reserve(user, "tokens", 5).id, actual=3)

    track_ms: list[float] = []
    reserve_ms: list[float] = []
    confirm_ms: list[float] = []
    for _ in range(args.rounds):
        track_ms += timed(lambda: kernia_billing.track(user, "tokens", 1), args.calls)
        holds: list[int] = []
        reserve_ms += timed(
            lambda holds=holds: holds.append(kernia_billing.reserve(user, "tokens", 5).id),
            args.calls,
        )
        pending = iter(holds)
        confirm_ms += timed(
            lambda pending=pending: kernia_billing.confirm(next(pending), actual=3), args.calls
        )

    with CaptureQueriesContext(connection) as track_q:
        kernia_billing.track(user, "tokens", 1)
    with CaptureQueriesContext(connection) as reserve_q:
        hold = kernia_billing.reserve(user, "tokens", 5)
    with CaptureQueriesContext(connection) as confirm_q:
        kernia_billing.confirm(hold.id, actual=3)
    with CaptureQueriesContext(connection) as confirm_all_q:
        kernia_billing.confirm(kernia_billing.reserve(user, "tokens", 5).id)
    base = statistics.median(track_ms)
    print(f"database: {connection.vendor}; load average: {os.getloadavg()[0]:.1f}")
    print("| call | p50 ms | p99 ms | vs track p50 | statements |")
    print("|---|---:|---:|---:|---:|")
    for name, values, queries in (
        ("track", track_ms, len(track_q)),
        ("reserve", reserve_ms, len(reserve_q)),
        ("confirm (smaller actual)", confirm_ms, len(confirm_q)),
    ):
        p50 = statistics.median(values)
        p99 = statistics.quantiles(values, n=100)[98]
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f}x | {queries} |")
    print(f"(confirm of the reserved amount: {len(confirm_all_q) - len(reserve_q)} statements)")
    connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0, keepdb=False)


if __name__ == "__main__":
    main()
