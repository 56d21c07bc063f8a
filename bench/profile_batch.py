"""Where a 1,000-event batch track goes, in-process on PostgreSQL (a figure, not a test).

One request at a time through Django's test client with token authentication, next to
the batch floor (``bench/floor.py``). Prints, per request: process CPU (mean and p50:
the mean includes Python's full garbage collections, which hit one request in several)
and wall time, with the collector as is and after ``gc.freeze()``; the statements with
their client-side time; and the CPU and wall time of each stage (collector off)::

    .venv/bin/python bench/profile_batch.py --database mine_bench_profile

Run it from another checkout (``cd ../old && ../new/.venv/bin/python bench/profile_batch.py``)
to compare code: the checkout's own ``kernia_billing`` is imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

from bench import http_harness as harness  # noqa: E402

BATCH = "/api/auth/billing/track/batch"
FLOOR = "/floor/track/batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="kernia_bench_profile", help="a throwaway name")
    parser.add_argument("--requests", type=int, default=40, help="per measurement")
    args = parser.parse_args()
    url = f"{harness.DEFAULT_PG}/{args.database}"
    spec = {"groups": {"bench": {"users": 2, "included": 10**15, "overage": False}}}
    token = harness.prepare(url, spec)["bench"][0]
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.floor_settings"
    import django

    django.setup()
    from django.test import Client

    client = Client()
    sequence = [0]

    def post(path: str) -> None:
        sequence[0] += 1
        events = [
            {"feature": "messages", "idempotencyKey": f"p{sequence[0]}-{i}"} for i in range(1000)
        ]
        response = client.post(
            path,
            json.dumps({"events": events}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token}",
        )
        assert response.status_code == 200, response.content[:300]

    for _ in range(3):
        post(BATCH)
        post(FLOOR)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.requests} requests per line")
    per_request(post, args.requests)
    gc.freeze()
    per_request(post, args.requests, label="after gc.freeze()")
    gc.unfreeze()
    statements(post)
    wal_bytes(post, url, args.requests)
    stages(post, args.requests)


def per_request(post: Callable[[str], None], count: int, label: str = "") -> None:
    for path in (BATCH, FLOOR):
        cpu, wall = [], []
        for _ in range(count):
            started, started_cpu = time.perf_counter(), time.process_time()
            post(path)
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        print(
            f"{path:30s} CPU mean {statistics.mean(cpu):5.1f} ms p50 {statistics.median(cpu):5.1f}"
            f"  wall mean {statistics.mean(wall):5.1f} p50 {statistics.median(wall):5.1f}  {label}"
        )


def statements(post: Callable[[str], None]) -> None:
    from django.db import connection

    timings: list[tuple[float, str]] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timings.append(((time.perf_counter() - started) * 1000, sql))

    with connection.execute_wrapper(timed):
        post(BATCH)
    print(f"statements of one batch (COMMIT not included): {len(timings)}")
    for ms, sql in timings:
        print(f"  {ms:6.2f} ms  {' '.join(sql.split())[:110]}")


def wal_bytes(post: Callable[[str], None], url: str, count: int) -> None:
    """WAL written per request (read from another connection around each one): what
    the COMMIT waits to flush, with the full-page images of pages first touched since
    the last checkpoint."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as other:
        for path in (BATCH, FLOOR):
            written = []
            for _ in range(count):
                (before,) = other.execute("SELECT pg_current_wal_lsn()").fetchall()[0]
                post(path)
                (after,) = other.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [before]
                ).fetchall()[0]
                written.append(float(after) / 1024)
            print(
                f"{path:30s} WAL per request p50 {statistics.median(written):7.0f} KiB, "
                f"max {max(written):7.0f} KiB"
            )


def stages(post: Callable[[str], None], count: int) -> None:
    """CPU and wall of each stage, summed over ``count`` requests (collector off)."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from rest_framework.renderers import JSONRenderer

    import kernia_billing.api.batch as view
    import kernia_billing.services.usage.batch as service

    spent: dict[str, list[float]] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        static = isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod)

        def timed(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                total = spent.setdefault(label, [0.0, 0.0])
                total[0] += time.process_time() - cpu
                total[1] += time.perf_counter() - wall

        setattr(owner, name, staticmethod(timed) if static else timed)

    wrap(view.BatchTrackView, "post", "view (all of it)")
    wrap(view.BatchTrackView, "_validated_events", "  events' shapes")
    wrap(view.usage, "track_batch", "  service (all of it)")
    wrap(service, "_prepare_alike", "    preparing events")
    wrap(service, "_decide_locked", "    transaction: lock, decide, write")
    wrap(service, "_select_many", "      lock SELECT")
    wrap(service, "_write_decisions", "      UPDATE + INSERT + overage")
    wrap(BaseDatabaseWrapper, "commit", "    COMMIT")
    wrap(view, "_render", "  answers as dicts")
    wrap(JSONRenderer, "render", "JSON body")
    gc.disable()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        post(BATCH)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.enable()
    print(
        f"stages, per request (collector off): request CPU {cpu / count * 1000:.1f} ms, "
        f"wall {wall / count * 1000:.1f} ms"
    )
    for label, (stage_cpu, stage_wall) in spent.items():
        print(
            f"  {label:38s} CPU {stage_cpu / count * 1000:6.2f} ms  "
            f"wall {stage_wall / count * 1000:6.2f} ms"
        )


if __name__ == "__main__":
    main()
