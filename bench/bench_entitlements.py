"""In-process benchmark of check and track next to hand-written floor views.

Usage::

    .venv/bin/python bench/bench_entitlements.py                # SQLite (file)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kernia_bench \\
        .venv/bin/python bench/bench_entitlements.py --threads 1 8
    .venv/bin/python bench/bench_entitlements.py --grants 5     # 5 live grants too
    .venv/bin/python bench/bench_entitlements.py --grants 5 --draw   # every track draws

Each endpoint is called through Django's test client with the same token
authentication, in one process and one run, so the figures are comparable.
Prints p50/p99 latency, throughput, the ratio to the floor and the queries per
call (beyond authentication). A figure, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402


class DisableMigrations(dict):
    """Build tables straight from the models: dj-stripe's migrations take ~45 s."""

    def __contains__(self, item: object) -> bool:
        return True

    def __getitem__(self, item: str) -> None:
        return None


ENDPOINTS = {
    "check": ("/api/auth/billing/check", "/floor/check"),
    "track": ("/api/auth/billing/track", "/floor/track"),
}


def setup_database(grants: int = 0, *, draw: bool = False) -> tuple[str, str]:
    """A throwaway test database with one customer on a plan (and ``grants`` live,
    expiring grants beside it); returns a token. With ``draw`` the plan includes
    nothing, so every track takes the multi-grant draw (the grants pay for it), and the
    floor (which knows no grants) is measured on a second customer whose plan covers
    its tracks: the floor stays "the least a deduction costs". Returns (ours, floor)."""
    from rest_framework.authtoken.models import Token

    settings.MIGRATION_MODULES = DisableMigrations()
    if connection.vendor == "sqlite":
        # Threads need a file: an in-memory database is one shared-cache connection.
        connection.settings_dict["TEST"]["NAME"] = f"{tempfile.mkdtemp()}/bench.sqlite3"
    elif os.environ.get("BENCH_TEST_DATABASE"):  # a name of your own on a shared server
        connection.settings_dict["TEST"]["NAME"] = os.environ["BENCH_TEST_DATABASE"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)

    from kernia_billing.models import Feature, Plan, PlanFeature
    from tests.factories import UserFactory

    messages = Feature.objects.create(key="messages", name="Messages", kind="metered")
    plan = Plan.objects.create(key="bench", name="Bench", is_default=True)
    PlanFeature.objects.create(
        plan=plan, feature=messages, included=0 if draw else 10**12 // 2, reset_period="month"
    )
    user = UserFactory(username="bench")
    import kernia_billing

    kernia_billing.check(user, "messages")
    from datetime import timedelta

    from django.utils import timezone

    for index in range(grants):
        expires = timezone.now() + timedelta(days=30 + index)
        amount = 10**9 if draw else 1000
        kernia_billing.grant(user, "messages", amount, expires_at=expires, reason="bench")
    token = Token.objects.create(user=user).key
    if not draw:
        return token, token
    from kernia_billing.models import BillingCustomer
    from kernia_billing.services.entitlements.sync import sync_entitlements

    roomy = Plan.objects.create(key="bench-floor", name="Bench floor")
    PlanFeature.objects.create(
        plan=roomy, feature=messages, included=10**12 // 2, reset_period="month"
    )
    floor_user = UserFactory(username="bench-floor")
    kernia_billing.check(floor_user, "messages")
    customer = BillingCustomer.objects.get(owner_id=str(floor_user.pk))
    BillingCustomer.objects.filter(pk=customer.pk).update(plan=roomy)
    customer.refresh_from_db()
    sync_entitlements(customer)
    return token, Token.objects.create(user=floor_user).key


def call(client: Client, path: str, token: str) -> int:
    # Each endpoint's own body: check takes no amount (with one it is not the plain body).
    body = (
        {"feature": "messages"} if path.endswith("check") else {"feature": "messages", "amount": 1}
    )
    response = client.post(
        path,
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    return response.status_code


def measure(path: str, token: str, *, threads: int, calls: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``calls`` calls per thread, and wall-clock throughput (calls/s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        client = Client()
        local: list[float] = []
        call(client, path, token)  # warm the connection
        barrier.wait()
        for _ in range(calls):
            start = time.perf_counter()
            status = call(client, path, token)
            local.append((time.perf_counter() - start) * 1000)
            if status >= 300:
                raise SystemExit(f"{path} answered {status}")
        with lock:
            latencies.extend(local)
        connections.close_all()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


def queries_per_call(path: str, token: str) -> int:
    """Statements one call runs, less those authentication needs (token + user)."""
    client = Client()
    call(client, path, token)
    with CaptureQueriesContext(connection) as ctx:
        call(client, path, token)
    statements = [
        q["sql"]
        for q in ctx.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "BEGIN", "COMMIT"))
    ]
    auth = [s for s in statements if "authtoken_token" in s]
    return len(statements) - len(auth)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * pct), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=300, help="calls per thread")
    parser.add_argument("--grants", type=int, default=0, help="live grants beside the plan")
    parser.add_argument(
        "--draw", action="store_true", help="the plan includes nothing: every track draws"
    )
    args = parser.parse_args()

    with override_settings(ROOT_URLCONF="bench.floor", DEBUG=False):
        token, floor_token = setup_database(args.grants, draw=args.draw)
        print(
            f"database: {connection.vendor}; calls per thread: {args.calls}; "
            f"live grants: {args.grants}{' (every track draws)' if args.draw else ''}"
        )
        header = f"{'endpoint':<8}{'threads':>8}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}"
        print(header + f"{'floor p50':>11}{'floor/s':>9}{'ratio':>7}{'queries':>9}")
        for name, (ours, floor) in ENDPOINTS.items():
            queries = queries_per_call(ours, token)
            floor_queries = queries_per_call(floor, floor_token)
            for threads in args.threads:
                floor_lat, floor_rate = measure(
                    floor, floor_token, threads=threads, calls=args.calls
                )
                our_lat, our_rate = measure(ours, token, threads=threads, calls=args.calls)
                ratio = statistics.median(our_lat) / statistics.median(floor_lat)
                print(
                    f"{name:<8}{threads:>8}{percentile(our_lat, 0.5):>9.2f}"
                    f"{percentile(our_lat, 0.99):>9.2f}{our_rate:>10.0f}"
                    f"{percentile(floor_lat, 0.5):>11.2f}{floor_rate:>9.0f}{ratio:>7.2f}"
                    f"{queries:>5} ({floor_queries})"
                )
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)


if __name__ == "__main__":
    main()
